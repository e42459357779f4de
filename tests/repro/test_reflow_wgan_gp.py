import pytest

from kexue.repro import reflow_wgan_gp as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["reflow-wgan-gp"]
    assert mod.CLAIM.slug == "reflow-wgan-gp"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


@pytest.mark.slow
def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert r.metrics["straightness_2rf"] <= 0.5 * r.metrics["straightness_1rf"]
    assert r.metrics["swd_2rf_N1"] <= 0.7 * r.metrics["swd_1rf_N1"]
    assert r.metrics["identity_ld_error"] < 1e-12
    assert r.metrics["reflow_gan_modes_min"] >= 7

import pytest

from kexue.repro import gan_qp as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["gan-qp"]
    assert mod.CLAIM.slug == "gan-qp"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


@pytest.mark.slow
def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert r.metrics["gan_qp_modes"] >= 7
    assert r.metrics["qp_point_mass_error"] < 1e-10
    assert r.metrics["max_dT_over_lambda_d"] <= 1 + 1e-9
    assert r.metrics["gan_qp_critic_ms"] < r.metrics["wgan_gp_critic_ms"]

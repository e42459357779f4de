import pytest

from kexue.repro import gan_as_diffusion_ode as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["gan-as-diffusion-ode"]
    assert mod.CLAIM.slug == "gan-as-diffusion-ode"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


@pytest.mark.slow
def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert r.metrics["swd_decreasing_h"] >= 5 * min(r.metrics["swd_logit"], r.metrics["swd_ns"])
    assert r.metrics["particles_swd_end"] * 3 <= r.metrics["particles_swd_start"]
    assert r.metrics["regression_identity_error"] < 1e-12

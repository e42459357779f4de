import pytest

from kexue.repro import gradient_normalization as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["gradient-normalization"]
    assert mod.CLAIM.slug == "gradient-normalization"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


@pytest.mark.slow
def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert r.metrics["max_grad_norm_f_hat"] <= 1.0
    assert r.metrics["gn_bound_rel_error"] < 1e-6
    assert r.metrics["max_f_hat_jump"] > 1e-3 and r.metrics["f_change_there"] < 1e-6

from kexue.repro import gradient_flow as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["gradient-flow"]
    assert mod.CLAIM.slug == "gradient-flow"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert 0.9 <= r.metrics["gd_order"] <= 1.1
    assert 3.7 <= r.metrics["rk4_order"] <= 4.3
    assert r.metrics["pde_vs_langevin_l1_t8"] < 0.05

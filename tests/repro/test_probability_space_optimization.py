from kexue.repro import probability_space_optimization as mod
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalog():
    post = BY_SLUG["probability-space-optimization"]
    assert mod.CLAIM.slug == "probability-space-optimization"
    assert (mod.CLAIM.url, mod.CLAIM.date) == (post.url, post.date)


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    failed = [c.name + ": " + c.describe() for c in r.checks if not c.passed]
    assert r.verdict == "reproduced", failed
    assert r.figures and all(p.is_file() and p.parent == tmp_path for p in r.figures)
    assert r.metrics["simplex_worst_objective"] < 1e-6
    assert r.metrics["simplex_worst_gap"] < 1e-5
    assert r.metrics["ou_worst_relative_error"] < 0.02

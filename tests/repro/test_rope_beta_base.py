import pytest

from kexue.repro import load
from kexue.repro import rope_beta_base as mod
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    assert r.verdict == "reproduced", [c for c in r.checks if not c.passed]
    m = r.metrics
    assert m["loss rope/pi@128"] > m["loss rope/direct@128"] > m["loss rope/direct@32"]
    assert m["loss rope/ntk@32"] == m["loss rope/direct@32"]  # k = 1 at the training length
    assert r.figures and all(p.exists() for p in r.figures)
    assert len(r.tables[0].rows) == len(mod.VARIANTS)


def test_claim_matches_catalog_and_mode_is_validated(tmp_path):
    assert load("rope-beta-base") is mod
    post = BY_SLUG["rope-beta-base"]
    assert (mod.CLAIM.url, mod.CLAIM.date, mod.CLAIM.title) == (post.url, post.date, post.title)
    with pytest.raises(ValueError, match="mode must be one of"):
        mod.run("fast", 0, tmp_path)

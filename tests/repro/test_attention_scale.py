import pytest

from kexue.repro import attention_scale as mod
from kexue.repro import load


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    assert r.verdict == "reproduced", [c for c in r.checks if not c.passed]
    m = r.metrics
    assert m["gaussian fitted c"] == pytest.approx(0.841, abs=0.002)
    assert m["cosine fitted c (d=128)"] == pytest.approx(3.49, abs=0.01)
    assert m["cosine alpha*(256, d=128)"] == pytest.approx(22.29, abs=0.01)
    assert r.figures and all(p.exists() for p in r.figures)
    assert load("attention-scale").CLAIM.url.endswith("/9812")

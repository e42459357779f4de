from kexue.repro import load
from kexue.repro import rerope as mod


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    assert r.verdict == "reproduced", [c for c in r.checks if not c.passed]
    m = r.metrics
    assert m["loss rope/rerope@128"] < m["loss rope/direct@128"] - 0.2
    # ReRoPE keeps the loss near its in-length value while direct extrapolation drifts up
    assert m["loss rope/rerope@256"] < m["loss rope/rerope@32"] + 0.2 < m["loss rope/direct@256"]
    assert r.figures and all(p.exists() for p in r.figures)
    assert load("rerope").CLAIM.slug == "rerope"

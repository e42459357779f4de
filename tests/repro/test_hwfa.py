from kexue.repro import hwfa as mod
from kexue.repro import load


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    assert r.verdict == "reproduced", [c for c in r.checks if not c.passed]
    m = r.metrics
    assert m["loss hwfa/direct@256"] < m["loss hwfa/direct@32"] + 0.1
    assert m["loss hwfa/direct@256"] < m["loss rope/direct@256"] - 0.5
    assert m["HWFA window for the full-mode model"] == 16
    assert r.figures and all(p.exists() for p in r.figures)
    assert load("hwfa").CLAIM.date == "2023-05-12"

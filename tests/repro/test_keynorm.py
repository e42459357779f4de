from kexue.repro import keynorm as mod
from kexue.repro import load


def test_quick_mode_reproduces(tmp_path):
    r = mod.run("quick", 0, tmp_path)
    assert r.verdict == "reproduced", [c for c in r.checks if not c.passed]
    m = r.metrics
    assert m["loss kna/direct@128"] < m["loss rope/direct@128"] - 0.1
    assert m["loss kna/pi@128"] > m["loss kna/direct@128"]
    assert r.figures and all(p.exists() for p in r.figures)
    assert load("keynorm").CLAIM.url.endswith("/9859")

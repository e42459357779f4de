"""The retry claim in quick mode."""

from kexue.repro import load


def test_retry_claim_reproduces_quick(tmp_path):
    result = load("retry").run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    names = " ".join(c.name for c in result.checks)
    assert "versions 1, 2 and 5 agree" in names and "independent" in names
    assert result.metrics["success kexue Retry block (us/call)"] > 0
    assert result.figures and all(p.is_file() for p in result.figures)
    # the table reproduces the spec's counts for max_tries = 5
    for k, calls, sleeps, ok, exp_calls, exp_sleeps in result.table.rows:
        assert (calls, sleeps, ok) == (min(k + 1, 5), min(k, 4), k < 5) == (exp_calls, exp_sleeps, k < 5)

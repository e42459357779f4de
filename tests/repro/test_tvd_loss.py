"""The TaiLr / TVD loss claim in quick mode."""

from kexue.repro import load


def test_tvd_loss_reproduces_quick(tmp_path):
    result = load("tvd-loss").run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    ce, tailr = "CE", "TaiLr gamma=0.8"
    assert m[f"{tailr} acc"] >= m[f"{ce} acc"]
    assert m[f"{tailr} memo"] < m[f"{ce} memo"]
    assert m[f"{tailr} p_wrong"] < 0.5 * m[f"{ce} p_wrong"]
    assert m[f"{tailr} ece"] < 0.5 * m[f"{ce} ece"]
    assert result.figures and all(p.is_file() for p in result.figures)
    assert len(result.table.rows) == 2

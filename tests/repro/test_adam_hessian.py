from kexue.repro import adam_hessian
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[adam_hessian.CLAIM.slug]
    assert (adam_hessian.CLAIM.url, adam_hessian.CLAIM.date) == (post.url, post.date)
    result = adam_hessian.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert 0.85 <= m["slope_none"] <= 1.15 and 0.4 <= m["slope_fisher"] <= 0.6 and m["slope_iso"] < 0.2
    assert result.figures and result.figures[0].is_file()

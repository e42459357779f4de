from kexue.repro import momentum_accumulation
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[momentum_accumulation.CLAIM.slug]
    assert (momentum_accumulation.CLAIM.url, momentum_accumulation.CLAIM.date) == (post.url, post.date)
    result = momentum_accumulation.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["sgdm_k4_maxdiff"] <= 1e-12 and m["tiger_k3_maxdiff"] <= 1e-12
    assert m["acc_builtin_lr0.03"] >= m["acc_plain_lr0.03"] + 0.01
    assert result.figures and result.figures[0].is_file()

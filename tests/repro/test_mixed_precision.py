from kexue.repro import mixed_precision
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[mixed_precision.CLAIM.slug]
    assert (mixed_precision.CLAIM.url, mixed_precision.CLAIM.date) == (post.url, post.date)
    result = mixed_precision.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["fp16_lost_fraction_S1"] > 0.5 and m["fp16_overflow_S1024"] == 0
    assert m["early_loss_x1000_seed0"] <= 0.5 * m["early_loss_unscaled_seed0"]
    assert abs(m["parity_bf16"] - m["parity_fp32"]) <= 0.1 * m["parity_fp32"]
    assert result.figures and result.figures[0].is_file()

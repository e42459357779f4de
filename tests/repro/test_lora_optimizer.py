from kexue.repro import lora_optimizer
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[lora_optimizer.CLAIM.slug]
    assert (lora_optimizer.CLAIM.url, lora_optimizer.CLAIM.date) == (post.url, post.date)
    result = lora_optimizer.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["r2_lora_rel_error"] >= 0.5 and m["r2_lora_hard_rank_max"] <= 2
    assert m["r2_resampled_rel_error"] <= 0.05 and m["r2_serial_eff_rank"] >= 8
    assert m["optimizer_vs_module_maxdiff"] <= 1e-10
    assert result.figures and result.figures[0].is_file()

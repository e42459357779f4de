"""The LoRA-GA / LoRA-Pro claim in quick mode."""

from kexue.repro import load


def test_lora_ga_pro_reproduces_quick(tmp_path):
    result = load("lora-ga-pro").run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert abs(m["invariant_ga_residual"] - m["invariant_eckart_young"]) < 1e-8 * m["invariant_eckart_young"]
    assert m["invariant_output_change"] < 1e-12
    assert m["sgd_lora_steps_to_target"] >= 2 * m["sgd_ga_steps_to_target"]
    assert m["adam_equal_lr_lora_over_ga"] >= 2.0
    assert m["sgd_full_final_loss"] < m["plateau"] <= m["sgd_lora_final_loss"]
    assert m["adam_full_final_loss"] < m["plateau"] <= m["adam_lora_final_loss"]
    assert m["pro_mean_distance_to_G"] <= m["lora_mean_distance_to_G"]
    assert m["mlp_ga_loss_at_50"] < m["mlp_lora_loss_at_50"]
    assert m["mlp_ga+pro_loss_at_50"] < m["mlp_lora_loss_at_50"]
    assert result.figures and all(p.is_file() for p in result.figures)

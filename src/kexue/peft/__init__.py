"""Parameter-efficient fine-tuning: LoRA, LoRA-GA initialisation and LoRA-Pro gradient adjustment.

* :class:`LoraLinear`, :func:`apply_lora` — peft-style LoRA on ``nn.Linear`` (merge / unmerge, dropout,
  adapter-only :func:`save_adapter` / :func:`load_adapter`).
* LoRA-GA (:mod:`kexue.peft.lora_ga`): ``apply_lora(..., init="ga", train_step=...)`` — factors from the SVD
  of the full gradient, base weight offset so the output is unchanged at step 0.
* LoRA-Pro (:mod:`kexue.peft.lora_pro`): ``apply_lora(..., gradient="pro")``, :func:`lora_pro_hook`,
  :class:`LoraProAdamW` — gradients whose induced update of ``W`` is the projection of the full gradient.

Posts: "对齐全量微调！这是我看过最精彩的LoRA改进（一）/（二）" (2024-07-12 / 2024-07-29,
kexue.fm/archives/10226, kexue.fm/archives/10266).
"""

from .lora import (
    LoraLinear,
    apply_lora,
    find_target_modules,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)
from .lora_ga import LoraGAConfig, estimate_gradients, lora_ga_factors
from .lora_pro import (
    LoraProAdamW,
    equivalent_gradient,
    lora_pro_gradients,
    lora_pro_hook,
    project_gradient,
    solve_sylvester_symmetric,
)

__all__ = [
    "LoraGAConfig",
    "LoraLinear",
    "LoraProAdamW",
    "apply_lora",
    "equivalent_gradient",
    "estimate_gradients",
    "find_target_modules",
    "load_adapter",
    "lora_ga_factors",
    "lora_layers",
    "lora_pro_gradients",
    "lora_pro_hook",
    "lora_state_dict",
    "merge_and_unload",
    "merge_lora",
    "project_gradient",
    "save_adapter",
    "solve_sylvester_symmetric",
    "unmerge_lora",
]

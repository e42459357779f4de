"""LoRA: low-rank adapters on ``nn.Linear`` layers.

A frozen weight ``W`` (``out x in``, torch layout ``y = x W^T + b``) gets a trainable low-rank update

    y = x W^T + b + s * (dropout(x) A^T) B^T,    A in R^{r x in},  B in R^{out x r},

with ``s = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA). The layout and parameter names follow
``peft`` (``lora_A``: ``r x in``, ``lora_B``: ``out x r``) so that weights move between the two unchanged.
The posts write ``Y = X W`` with ``W = W0 + A B`` on the input side: ``A_post = lora_A^T``,
``B_post = lora_B^T``.

Posts: "对齐全量微调！这是我看过最精彩的LoRA改进（一）" (2024-07-12, kexue.fm/archives/10226) and
"（二）" (2024-07-29, kexue.fm/archives/10266); LoRA itself is reviewed in "梯度视角下的LoRA：简介、分析、
猜测及推广" (2023-04-17, kexue.fm/archives/9590).

What is here: :class:`LoraLinear` (merge / unmerge, dropout, an optional base-weight offset recorded by its
two factors for LoRA-GA), :func:`apply_lora` (wrap target layers by name, peft's matching rules; LoRA-GA
initialisation with ``init="ga"``; LoRA-Pro gradients with ``gradient="pro"``), :func:`merge_lora`,
:func:`unmerge_lora`, :func:`merge_and_unload`, and adapter-only :func:`save_adapter` / :func:`load_adapter`
(atomic writes).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LoraLinear",
    "apply_lora",
    "find_target_modules",
    "load_adapter",
    "lora_layers",
    "lora_state_dict",
    "merge_and_unload",
    "merge_lora",
    "save_adapter",
    "unmerge_lora",
]

_INITS = ("default", "gaussian", "zeros", "ga")
_GRADIENTS = ("plain", "pro")
_X_RULES = ("sylvester", "symmetric", "zero")
_FORMAT = "kexue-lora-adapter"


def _check_rank(r: object, in_features: int, out_features: int, name: str = "") -> int:
    where = f" for layer {name!r}" if name else ""
    if isinstance(r, bool) or not isinstance(r, int):
        raise TypeError(f"LoRA rank r must be an int{where}, got {type(r).__name__}")
    if r <= 0:
        raise ValueError(f"LoRA rank r must be >= 1{where}, got {r}")
    if r > min(in_features, out_features):
        raise ValueError(
            f"LoRA rank r must be <= min(in_features, out_features) = "
            f"min({in_features}, {out_features}) = {min(in_features, out_features)}{where}, got {r}"
        )
    return r


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


class LoraLinear(nn.Module):
    """An ``nn.Linear`` with a LoRA adapter: ``y = base(x) + s * B A dropout(x)``.

    Args:
        base_layer: the ``nn.Linear`` to adapt; its weight and bias are frozen (``requires_grad=False``).
        r: rank, ``1 <= r <= min(in_features, out_features)``.
        alpha: ``lora_alpha``; the scaling is ``s = alpha / r`` (``alpha / sqrt(r)`` if ``use_rslora``).
        dropout: dropout probability on the adapter's input (peft's ``lora_dropout``).
        init: ``"default"`` (peft's: ``A`` Kaiming-uniform with ``a = sqrt(5)``, ``B = 0``), ``"gaussian"``
            (``A ~ N(0, 1/in)``, ``B = 0``) or ``"zeros"`` (both zero). LoRA-GA is applied afterwards with
            :meth:`init_lora_ga` (or ``apply_lora(..., init="ga")``).
        gradient: ``"plain"`` (autograd's gradients) or ``"pro"``: the backward pass returns LoRA-Pro's
            adjusted gradients (see :mod:`kexue.peft.lora_pro`), so any optimizer follows LoRA-Pro
            (SGD form; with Adam this is the "efficient" mode).
        x_rule, jitter: LoRA-Pro's choice of the free ``r x r`` matrix and the Gram-matrix jitter.
        generator: random generator for the initialisation.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        *,
        init: str = "default",
        use_rslora: bool = False,
        gradient: str = "plain",
        x_rule: str = "sylvester",
        jitter: float = 1e-8,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"LoraLinear wraps an nn.Linear, got {type(base_layer).__name__}")
        in_f, out_f = base_layer.in_features, base_layer.out_features
        _check_rank(r, in_f, out_f)
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise TypeError(f"alpha must be a finite number, got {alpha!r}")
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if not (isinstance(dropout, int | float) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        _check_choice("init", init, ("default", "gaussian", "zeros"))
        _check_choice("gradient", gradient, _GRADIENTS)
        _check_choice("x_rule", x_rule, _X_RULES)
        if not jitter >= 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        self.base_layer = base_layer
        for p in base_layer.parameters():
            p.requires_grad_(False)
        self.r = r
        self.alpha = float(alpha)
        self.use_rslora = bool(use_rslora)
        self.scaling = float(alpha) / (math.sqrt(r) if use_rslora else r)
        self.dropout_p = float(dropout)
        self.gradient = gradient
        self.x_rule = x_rule
        self.jitter = float(jitter)
        w = base_layer.weight
        self.lora_A = nn.Parameter(torch.zeros(r, in_f, dtype=w.dtype, device=w.device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, dtype=w.dtype, device=w.device))
        self.lora_dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Factors of the offset subtracted from the base weight (LoRA-GA): W_frozen = W0 - s * B0 A0.
        self.register_buffer("lora_A_offset", None)
        self.register_buffer("lora_B_offset", None)
        self.merged = False
        self.reset_lora_parameters(init, generator=generator)

    # -- shapes / peft-like attributes ---------------------------------------------------------
    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The (frozen) base weight, as peft exposes it."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def extra_repr(self) -> str:
        return (
            f"r={self.r}, alpha={self.alpha:g}, scaling={self.scaling:g}, dropout={self.dropout_p:g}, "
            f"gradient={self.gradient!r}, merged={self.merged}"
        )

    # -- initialisation ------------------------------------------------------------------------
    @torch.no_grad()
    def reset_lora_parameters(self, init: str = "default", generator: torch.Generator | None = None) -> None:
        """Re-initialise ``A`` and ``B`` (``B = 0``, so the layer equals its base)."""
        _check_choice("init", init, ("default", "gaussian", "zeros"))
        if self.merged:
            raise ValueError("unmerge the adapter before re-initialising it")
        self.lora_B.zero_()
        if init == "default":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / math.sqrt(self.in_features), generator=generator)
        else:
            self.lora_A.zero_()

    def init_lora_ga(self, grad: torch.Tensor, config: Any = None) -> None:
        """LoRA-GA: set ``A, B`` from the SVD of the full-weight gradient ``grad`` and offset the base weight.

        See :func:`kexue.peft.lora_ga.lora_ga_factors`. Any previous offset is removed first, so the
        layer's output equals that of the original base weight before and after this call.
        """
        from .lora_ga import LoraGAConfig, lora_ga_factors

        cfg = LoraGAConfig() if config is None else config
        if self.merged:
            raise ValueError("unmerge the adapter before LoRA-GA initialisation")
        weight = self._original_weight() if cfg.scale == "weightS" else None
        A0, B0 = lora_ga_factors(grad, self.r, self.scaling, cfg, weight=weight)
        with torch.no_grad():
            self.lora_A.copy_(A0)
            self.lora_B.copy_(B0)
        self.set_offset(self.lora_A.detach().clone(), self.lora_B.detach().clone())

    # -- the base-weight offset ----------------------------------------------------------------
    def _offset_delta(self, A0: torch.Tensor, B0: torch.Tensor) -> torch.Tensor:
        w = self.base_layer.weight
        ct = torch.promote_types(w.dtype, torch.float32)
        return self.scaling * (B0.to(ct) @ A0.to(ct))

    def _original_weight(self) -> torch.Tensor:
        """``W0`` = base weight plus the current offset (in at least float32), without the merge."""
        w = self.base_layer.weight.detach()
        ct = torch.promote_types(w.dtype, torch.float32)
        out = w.to(ct).clone()
        if self.merged:
            out -= self.scaling * (self.lora_B.detach().to(ct) @ self.lora_A.detach().to(ct))
        if self.lora_A_offset is not None:
            out += self._offset_delta(self.lora_A_offset, self.lora_B_offset)
        return out

    @torch.no_grad()
    def set_offset(self, A0: torch.Tensor | None, B0: torch.Tensor | None) -> None:
        """Make the frozen weight ``W0 - s * B0 A0`` (``W0``: the weight without any offset).

        ``None`` removes the offset. The factors are kept as buffers so that an adapter file can
        re-create the same frozen weight from the original model (see :func:`save_adapter`).
        """
        if (A0 is None) != (B0 is None):
            raise ValueError("give both offset factors or neither")
        if self.merged:
            raise ValueError("unmerge the adapter before changing the base-weight offset")
        w = self.base_layer.weight
        if A0 is not None:
            if tuple(A0.shape) != tuple(self.lora_A.shape) or tuple(B0.shape) != tuple(self.lora_B.shape):
                raise ValueError(
                    f"offset factors must have shapes {tuple(self.lora_A.shape)} and "
                    f"{tuple(self.lora_B.shape)}, got {tuple(A0.shape)} and {tuple(B0.shape)}"
                )
        ct = torch.promote_types(w.dtype, torch.float32)
        new = w.detach().to(ct)
        if self.lora_A_offset is not None:
            new = new + self._offset_delta(self.lora_A_offset, self.lora_B_offset)
        if A0 is not None:
            A0 = A0.detach().to(device=w.device, dtype=w.dtype).clone()
            B0 = B0.detach().to(device=w.device, dtype=w.dtype).clone()
            new = new - self._offset_delta(A0, B0)
        w.copy_(new.to(w.dtype))
        self.lora_A_offset = A0
        self.lora_B_offset = B0

    # -- merge -------------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """``s * B A`` (``out x in``), differentiable in ``A`` and ``B``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``s B A`` into the base weight (computed in at least float32); no-op if merged."""
        if self.merged:
            return
        w = self.base_layer.weight
        ct = torch.promote_types(w.dtype, torch.float32)
        w.copy_((w.to(ct) + self.scaling * (self.lora_B.to(ct) @ self.lora_A.to(ct))).to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``s B A`` from the base weight again; no-op if not merged."""
        if not self.merged:
            return
        w = self.base_layer.weight
        ct = torch.promote_types(w.dtype, torch.float32)
        w.copy_((w.to(ct) - self.scaling * (self.lora_B.to(ct) @ self.lora_A.to(ct))).to(w.dtype))
        self.merged = False

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        if self.merged:
            return base(x)
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"LoraLinear expected input with last dim {self.in_features}, got {tuple(x.shape)}"
            )
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        xd = self.lora_dropout(x2)
        A, B = self.lora_A, self.lora_B
        if xd.dtype != A.dtype:
            xd = xd.to(A.dtype)
        y = F.linear(x2, base.weight, base.bias)
        if self.gradient == "pro":
            from .lora_pro import lora_pro_linear

            y = lora_pro_linear(y, xd, A, B, self.scaling, self.x_rule, self.jitter)
        else:
            t = F.linear(xd, A) * self.scaling
            y = torch.addmm(y, t.to(y.dtype), B.t().to(y.dtype))
        return y.reshape(*lead, self.out_features)


# --- finding and wrapping target layers -------------------------------------------------------


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def find_target_modules(model: nn.Module, target_modules: str | Iterable[str]) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs that ``target_modules`` selects, with peft's matching rules.

    ``target_modules`` is a list of names (a module matches if its full dotted name equals an entry or
    ends with ``"." + entry``), a single string (a regular expression matched against the full name with
    ``re.fullmatch``), or ``"all-linear"`` (every ``nn.Linear``). Modules inside an existing
    :class:`LoraLinear` are never matched. Every list entry must match at least one module.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    names: list[tuple[str, nn.Module]] = []
    inside_lora: list[str] = []
    for name, mod in model.named_modules():
        if any(name.startswith(p + ".") for p in inside_lora):
            continue
        if isinstance(mod, LoraLinear):
            inside_lora.append(name)
        names.append((name, mod))
    linear_names = [n for n, m in names if isinstance(m, nn.Linear | LoraLinear)]
    if isinstance(target_modules, str):
        if target_modules == "all-linear":
            found = [(n, m) for n, m in names if isinstance(m, nn.Linear)]
            if not found:
                raise ValueError("target_modules='all-linear' matched nothing: the model has no nn.Linear")
            return found
        try:
            pattern = re.compile(target_modules)
        except re.error as exc:
            raise ValueError(
                f"target_modules {target_modules!r} is not a valid regular expression: {exc}"
            ) from exc
        found = [(n, m) for n, m in names if n and pattern.fullmatch(n)]
        if not found:
            raise ValueError(
                f"target_modules regex {target_modules!r} matched no module; "
                f"linear layers in the model: {linear_names[:20]}"
            )
        return found
    try:
        targets = list(target_modules)
    except TypeError as exc:
        raise TypeError(
            f"target_modules must be a str or an iterable of str, got {type(target_modules).__name__}"
        ) from exc
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be a non-empty list of non-empty names, got {targets!r}")
    found = [(n, m) for n, m in names if n and any(_matches(n, t) for t in targets)]
    missing = [t for t in targets if not any(_matches(n, t) for n, _ in found)]
    if missing:
        raise ValueError(
            f"target_modules {missing!r} matched no module; linear layers in the model: {linear_names[:20]}"
        )
    return found


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """All :class:`LoraLinear` layers of ``model`` with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]


def apply_lora(
    model: nn.Module,
    target_modules: str | Iterable[str],
    r: int,
    alpha: float,
    init: str = "default",
    gradient: str = "plain",
    *,
    dropout: float = 0.0,
    use_rslora: bool = False,
    train_step: Callable[[], Any] | None = None,
    gradients: dict[str, torch.Tensor] | None = None,
    ga_config: Any = None,
    x_rule: str = "sylvester",
    jitter: float = 1e-8,
    freeze_base: bool = True,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Wrap the selected ``nn.Linear`` layers of ``model`` in :class:`LoraLinear` (in place) and return it.

    Args:
        target_modules: see :func:`find_target_modules` (peft's rules).
        r, alpha, dropout, use_rslora: as in peft's ``LoraConfig`` (``r``, ``lora_alpha``, ``lora_dropout``).
        init: ``"default"`` / ``"gaussian"`` / ``"zeros"`` (see :class:`LoraLinear`) or ``"ga"`` for LoRA-GA:
            the full-weight gradients are estimated by running ``train_step()`` (your forward + backward on a
            few batches; see :func:`kexue.peft.lora_ga.estimate_gradients`) or taken from ``gradients``
            (``{module name: dL/dW}``), and each layer is initialised with ``ga_config``
            (:class:`kexue.peft.lora_ga.LoraGAConfig`). The model's output is unchanged.
        gradient: ``"plain"`` or ``"pro"`` (LoRA-Pro-adjusted gradients from the backward pass).
        freeze_base: set ``requires_grad=False`` on every parameter that is not a LoRA factor.
        generator: random generator for the initial ``A`` (LoRA-GA's randomised SVD is seeded by
            ``ga_config.seed`` instead).
    """
    _check_choice("init", init, _INITS)
    _check_choice("gradient", gradient, _GRADIENTS)
    found = find_target_modules(model, target_modules)
    for name, mod in found:
        if isinstance(mod, LoraLinear):
            raise ValueError(f"module {name!r} already has a LoRA adapter")
        if not isinstance(mod, nn.Linear):
            raise TypeError(
                f"LoRA supports nn.Linear layers; target module {name!r} is a {type(mod).__name__}"
            )
        _check_rank(r, mod.in_features, mod.out_features, name)
    if init == "ga":
        from .lora_ga import LoraGAConfig, check_ga_rank, estimate_gradients

        cfg = LoraGAConfig() if ga_config is None else ga_config
        if not isinstance(cfg, LoraGAConfig):
            raise TypeError(f"ga_config must be a LoraGAConfig, got {type(cfg).__name__}")
        for name, mod in found:
            check_ga_rank(r, mod.in_features, mod.out_features, name)
        if gradients is None:
            if train_step is None:
                raise ValueError("init='ga' needs train_step (a forward+backward callable) or gradients")
            gradients = estimate_gradients(model, [n for n, _ in found], train_step)
        missing = [n for n, _ in found if n not in gradients]
        if missing:
            raise ValueError(f"init='ga': no gradient given for target modules {missing}")
    elif train_step is not None or gradients is not None or ga_config is not None:
        raise ValueError("train_step / gradients / ga_config are only used with init='ga'")
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, mod in found:
        layer = LoraLinear(
            mod,
            r,
            alpha,
            dropout,
            init="default" if init == "ga" else init,
            use_rslora=use_rslora,
            gradient=gradient,
            x_rule=x_rule,
            jitter=jitter,
            generator=generator,
        )
        if init == "ga":
            assert gradients is not None
            layer.init_lora_ga(gradients[name], cfg)
        _set_submodule(model, name, layer)
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Merge every adapter into its base weight (outputs unchanged up to rounding)."""
    for _, layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_lora`."""
    for _, layer in lora_layers(model):
        layer.unmerge()
    return model


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge every adapter and replace each :class:`LoraLinear` by its plain ``nn.Linear``."""
    for name, layer in lora_layers(model):
        layer.merge()
        base = layer.base_layer
        if name:
            _set_submodule(model, name, base)
        else:
            model = base
    return model


# --- adapter files ----------------------------------------------------------------------------


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter tensors: ``{name}.lora_A``, ``{name}.lora_B`` and any LoRA-GA offset factors."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model):
        out[f"{name}.lora_A"] = layer.lora_A.detach().clone()
        out[f"{name}.lora_B"] = layer.lora_B.detach().clone()
        if layer.lora_A_offset is not None:
            out[f"{name}.lora_A_offset"] = layer.lora_A_offset.detach().clone()
            out[f"{name}.lora_B_offset"] = layer.lora_B_offset.detach().clone()
    return out


def save_adapter(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write only the adapters of ``model`` (and their configuration) to ``path``, atomically.

    LoRA-GA's offset is stored by its factors ``(A0, B0)``, so :func:`load_adapter` on the original
    pre-trained model re-creates the same frozen weight ``W0 - s B0 A0`` exactly.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save")
    config = {
        name: {
            "r": layer.r,
            "alpha": layer.alpha,
            "use_rslora": layer.use_rslora,
            "dropout": layer.dropout_p,
            "gradient": layer.gradient,
            "x_rule": layer.x_rule,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
        }
        for name, layer in layers
    }
    payload = {"format": _FORMAT, "version": 1, "config": config, "state": lora_state_dict(model)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_adapter(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load an adapter file written by :func:`save_adapter` into ``model`` (in place) and return it.

    Layers named in the file that are still plain ``nn.Linear`` are wrapped with the saved configuration;
    existing :class:`LoraLinear` layers must have the same rank. Offsets are re-applied to the base
    weight (an existing offset is removed first), so load into the original, un-merged model.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in several types
        raise ValueError(f"{path} is not a kexue LoRA adapter file ({exc.__class__.__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a kexue LoRA adapter file")
    config: dict[str, dict[str, Any]] = payload["config"]
    state: dict[str, torch.Tensor] = payload["state"]
    for name, cfg in config.items():
        try:
            mod = model.get_submodule(name) if name else model
        except AttributeError as exc:
            raise ValueError(f"adapter layer {name!r} does not exist in the model") from exc
        if isinstance(mod, nn.Linear):
            if (mod.in_features, mod.out_features) != (cfg["in_features"], cfg["out_features"]):
                raise ValueError(
                    f"adapter layer {name!r} is {cfg['in_features']}->{cfg['out_features']} but the model's "
                    f"is {mod.in_features}->{mod.out_features}"
                )
            mod = LoraLinear(
                mod,
                int(cfg["r"]),
                float(cfg["alpha"]),
                float(cfg["dropout"]),
                init="zeros",
                use_rslora=bool(cfg["use_rslora"]),
                gradient=str(cfg["gradient"]),
                x_rule=str(cfg["x_rule"]),
            )
            if not name:
                raise ValueError("cannot replace the root module; wrap the Linear in a container")
            _set_submodule(model, name, mod)
        if not isinstance(mod, LoraLinear):
            raise TypeError(f"adapter layer {name!r} is a {type(mod).__name__} in the model, not a Linear")
        if mod.r != int(cfg["r"]):
            raise ValueError(
                f"adapter layer {name!r} has rank {cfg['r']} but the model's adapter has {mod.r}"
            )
        if mod.merged:
            raise ValueError(f"layer {name!r} is merged; unmerge before loading an adapter")
        with torch.no_grad():
            mod.lora_A.copy_(state[f"{name}.lora_A"])
            mod.lora_B.copy_(state[f"{name}.lora_B"])
        if f"{name}.lora_A_offset" in state:
            mod.set_offset(state[f"{name}.lora_A_offset"], state[f"{name}.lora_B_offset"])
        else:
            mod.set_offset(None, None)
    return model

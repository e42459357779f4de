"""Transformer blocks with selectable norm placement, depth diagnostics, and a tiny causal LM whose
output layer can be tied to the input embedding.

**Norm placement** (one *branch* ``F_t`` is an attention or an MLP sub-layer; ``N`` is the norm):

* ``"pre"``: ``x_{t+1} = x_t + F_t(N(x_t))``, with a final ``N`` before the head. Unrolled,
  ``x_{t+1} = x_0 + sum_{s<=t} F_s(N(x_s))`` grows like ``t``, so ``N(x_{t+1}) ~= N(x_t)`` and late branches
  act side by side (wider, not deeper).
* ``"post"``: ``x_{t+1} = N(x_t + F_t(x_t))``; every branch is real depth.
* ``"deepnorm"`` (DeepNet, arXiv 2203.00555): ``x_{t+1} = N(alpha x_t + F_t(x_t))`` with
  ``alpha = (2 L)^(1/4)`` and value/output/MLP weights initialised Xavier-normal with gain
  ``beta = (8 L)^(-1/4)`` (``L`` blocks; decoder-only constants).
* ``"lns"`` (LayerNorm Scaling, arXiv 2502.05795): ``x_{t+1} = x_t + F_t(N(x_t) / sqrt(l))``, ``l`` the 1-based
  block index.

**Diagnostics** (:func:`depth_diagnostics`): stream size ``RMS(x_t)``; relative update
``rho_t = ||x_{t+1} - x_t|| / ||x_t||`` and the slope of ``log rho_t`` against ``log t`` (``t >= 2``; Pre Norm's
``O(t)`` growth predicts about ``-1``, Post Norm about ``0``); serial-versus-parallel gap
``delta_t = ||F_{t+1}(in(x_{t+1})) - F_{t+1}(in(x_t))|| / ||F_{t+1}(in(x_{t+1}))||`` (``in`` is the branch
input: ``N(x)`` for Pre Norm, ``x`` for Post Norm); and :meth:`TinyLM.forward` with ``parallel_pair=t``, which
runs branches ``t, t+1`` side by side on ``x_t`` (the functional test of "effective depth").

**Tied output embeddings**: logits ``z = N(h) W_E^T``. If the network starts as (nearly) the identity, ``h``
is the embedding ``w_i`` of the current token, ``N(w_i) = w_i / sigma`` and ``z_i ~= d sigma`` while
``z_k ~= 0``: the initial model predicts "repeat the current token" and its loss is
``log(e^{d sigma} + n - 1) - r d sigma`` (:func:`tied_initial_loss`; ``r`` the fraction of targets equal to
the current token) instead of ``log n``. Fixes (``TinyLM(output=...)``): ``"untied"``; ``embed_std =``
:func:`tied_init_std` ``= log(n) / d`` (so ``e^{d sigma} = n``); ``"proj"`` (an orthogonal ``d x d``
projection after the final norm); ``"swap"`` (the parameter-free :func:`half_swap` of the hidden state).

Posts: "为什么Pre Norm的效果不如Post Norm？" (Why Pre Norm underperforms Post Norm), 2022-03-29,
kexue.fm/archives/9009; "语言模型输出端共享Embedding的重新探索" (Revisiting tied input/output embeddings in
language models), 2023-07-20, kexue.fm/archives/9698.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.kv_attention import AttentionConfig, KVCache, LatentCache, build_attention

__all__ = [
    "NORMS",
    "OUTPUTS",
    "PLACEMENTS",
    "DepthReport",
    "MLP",
    "OutputHead",
    "ResidualBranch",
    "TinyLM",
    "TransformerBlock",
    "deepnorm_constants",
    "depth_diagnostics",
    "half_swap",
    "make_norm",
    "tied_init_std",
    "tied_initial_loss",
]

PLACEMENTS: tuple[str, ...] = ("pre", "post", "deepnorm", "lns")
NORMS: tuple[str, ...] = ("layer", "rms")
OUTPUTS: tuple[str, ...] = ("untied", "tied", "swap", "proj")


def _int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _choice(name: str, value: object, options: tuple[str, ...]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return str(value)


def make_norm(kind: str, d_model: int) -> nn.Module:
    """``"layer"``: LayerNorm (gain 1, bias 0 at init); ``"rms"``: RMSNorm (gain 1)."""
    _choice("norm", kind, NORMS)
    return nn.LayerNorm(d_model) if kind == "layer" else nn.RMSNorm(d_model, eps=1e-6)


def deepnorm_constants(n_layers: int) -> tuple[float, float]:
    """DeepNet's decoder-only ``alpha = (2 L)^(1/4)`` and ``beta = (8 L)^(-1/4)`` for ``L`` blocks."""
    _int("n_layers", n_layers)
    return (2.0 * n_layers) ** 0.25, (8.0 * n_layers) ** -0.25


# --- residual branches and blocks -------------------------------------------------------------


class MLP(nn.Module):
    """``GELU(x W_1 + b_1) W_2 + b_2`` with hidden width ``ratio * d_model``."""

    def __init__(self, d_model: int, ratio: int = 4) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, ratio * d_model)
        self.fc2 = nn.Linear(ratio * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class ResidualBranch(nn.Module):
    """One residual branch ``F`` with its norm placed per ``placement`` (see the module docstring).

    ``branch_input(x)`` is what ``F`` reads and ``combine(x, f)`` merges its output ``f`` into the stream, so
    ``forward(x) = combine(x, F(branch_input(x)))``. ``index`` is the 1-based block index (for ``"lns"``).
    """

    def __init__(
        self,
        fn: nn.Module,
        d_model: int,
        placement: str = "pre",
        norm: str = "layer",
        alpha: float = 1.0,
        index: int = 1,
    ) -> None:
        super().__init__()
        self.placement = _choice("placement", placement, PLACEMENTS)
        self.fn = fn
        self.norm = make_norm(norm, d_model)
        self.alpha = float(alpha)
        self.index = _int("index", index)
        self.takes_cache = hasattr(fn, "new_cache")

    def branch_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.placement == "pre":
            return self.norm(x)
        if self.placement == "lns":
            return self.norm(x) / math.sqrt(self.index)
        return x

    def combine(self, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.placement in ("pre", "lns"):
            return x + f
        if self.placement == "post":
            return self.norm(x + f)
        return self.norm(self.alpha * x + f)

    def branch(self, h: torch.Tensor, cache: KVCache | LatentCache | None = None) -> torch.Tensor:
        """``F(h)`` (the attention branch continues ``cache`` if given)."""
        return self.fn(h, cache) if self.takes_cache else self.fn(h)

    def forward(self, x: torch.Tensor, cache: KVCache | LatentCache | None = None) -> torch.Tensor:
        return self.combine(x, self.branch(self.branch_input(x), cache))


class TransformerBlock(nn.Module):
    """Attention branch then MLP branch, both with the same norm placement.

    ``attention`` is an :class:`~kexue.nn.kv_attention.AttentionConfig` (default: MHA with RoPE, head size
    ``d_model / n_heads``). ``index`` / ``n_layers`` set LNS's ``1/sqrt(l)`` and DeepNorm's constants.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        placement: str = "pre",
        norm: str = "layer",
        attention: AttentionConfig | None = None,
        mlp_ratio: int = 4,
        index: int = 1,
        n_layers: int = 1,
    ) -> None:
        super().__init__()
        _int("d_model", d_model)
        _int("n_heads", n_heads)
        _choice("placement", placement, PLACEMENTS)
        cfg = attention if attention is not None else AttentionConfig("mha", d_model, n_heads)
        if not isinstance(cfg, AttentionConfig):
            raise TypeError(f"attention must be an AttentionConfig, got {type(cfg).__name__}")
        if cfg.d_model != d_model:
            raise ValueError(f"attention config has d_model={cfg.d_model}, the block has d_model={d_model}")
        alpha, beta = deepnorm_constants(n_layers) if placement == "deepnorm" else (1.0, 1.0)
        self.attn = ResidualBranch(build_attention(cfg), d_model, placement, norm, alpha, index)
        self.mlp = ResidualBranch(
            MLP(d_model, _int("mlp_ratio", mlp_ratio)), d_model, placement, norm, alpha, index
        )
        if placement == "deepnorm":
            for name, p in self.named_parameters():
                if p.dim() != 2:
                    continue
                gain = beta if name.split(".")[-2] in ("w_v", "w_uv", "w_o", "fc1", "fc2") else 1.0
                nn.init.xavier_normal_(p, gain=gain)

    def forward(self, x: torch.Tensor, cache: KVCache | LatentCache | None = None) -> torch.Tensor:
        return self.mlp(self.attn(x, cache))


# --- tied output embeddings -------------------------------------------------------------------


def half_swap(h: torch.Tensor) -> torch.Tensor:
    """``S(h) = [h[d/2:], h[:d/2]]`` on the last dimension (a norm-preserving involution; ``d`` even)."""
    d = h.shape[-1]
    if d % 2:
        raise ValueError(f"half_swap needs an even last dimension, got {d}")
    return torch.cat([h[..., d // 2 :], h[..., : d // 2]], dim=-1)


def tied_init_std(vocab_size: int, d_model: int) -> float:
    """``sigma = log(n) / d``: the embedding std with ``e^{d sigma} = n`` (the post's init fix)."""
    return math.log(_int("vocab_size", vocab_size, 2)) / _int("d_model", d_model)


def tied_initial_loss(d_model: int, sigma: float, vocab_size: int, repeat_fraction: float = 0.0) -> float:
    """Predicted step-0 loss of a tied, identity-initialised LM: ``log(e^{d sigma} + n - 1) - r d sigma``.

    Assumes rows ``w_k ~ N(0, sigma^2 I)``, a gain-1 final norm (``N(w_i) = w_i / sigma``), and a fraction
    ``r`` of targets equal to the current token.
    """
    _int("d_model", d_model)
    _int("vocab_size", vocab_size, 2)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0.0 <= repeat_fraction <= 1.0:
        raise ValueError(f"repeat_fraction must be in [0, 1], got {repeat_fraction}")
    self_logit = d_model * sigma
    lse = float(
        torch.logaddexp(
            torch.tensor(self_logit, dtype=torch.float64),
            torch.tensor(math.log(vocab_size - 1), dtype=torch.float64),
        )
    )
    return lse - repeat_fraction * self_logit


class OutputHead(nn.Module):
    """Logits from the final hidden state ``h``.

    ``"untied"``: ``h U^T`` with its own ``U`` (``N(0, out_std^2)``); ``"tied"``: ``h W_E^T``; ``"swap"``:
    ``S(h) W_E^T`` (:func:`half_swap`); ``"proj"``: ``(h P) W_E^T`` with ``P`` orthogonally initialised.
    ``W_E`` is the embedding's own Parameter (gradients from both uses accumulate in it).
    """

    def __init__(self, embedding: nn.Embedding, mode: str = "untied", out_std: float | None = None) -> None:
        super().__init__()
        self.mode = _choice("output", mode, OUTPUTS)
        n, d = embedding.weight.shape
        if mode == "swap" and d % 2:
            raise ValueError(f"output='swap' needs an even d_model, got {d}")
        self.weight: nn.Parameter
        if mode == "untied":
            std = 1.0 / math.sqrt(d) if out_std is None else float(out_std)
            self.weight = nn.Parameter(torch.randn(n, d) * std)
        else:
            self.weight = embedding.weight  # the same Parameter object
        self.proj = nn.Linear(d, d, bias=False) if mode == "proj" else None
        if self.proj is not None:
            nn.init.orthogonal_(self.proj.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "swap":
            h = half_swap(h)
        elif self.proj is not None:
            h = self.proj(h)
        return h @ self.weight.T


# --- the tiny causal LM -----------------------------------------------------------------------


class TinyLM(nn.Module):
    """Token embedding -> ``n_layers`` :class:`TransformerBlock` -> (final norm) -> :class:`OutputHead`.

    Positions come from RoPE inside attention, so with zero branches the stream is the embedding itself.
    ``embed_std``: embedding init std (default 1, PyTorch's). ``zero_init_branches``: zero every branch's
    output projection (attention ``w_o``, MLP ``fc2``), making the network the identity at step 0.
    ``final_norm`` defaults to on for ``"pre"``/``"lns"`` and off for ``"post"``/``"deepnorm"`` (already normed).
    """

    def __init__(
        self,
        vocab_size: int = 256,
        d_model: int = 64,
        n_layers: int = 4,
        n_heads: int = 2,
        placement: str = "pre",
        norm: str = "layer",
        attention: AttentionConfig | None = None,
        mlp_ratio: int = 4,
        output: str = "untied",
        embed_std: float = 1.0,
        zero_init_branches: bool = False,
        final_norm: bool | None = None,
    ) -> None:
        super().__init__()
        self.vocab_size = _int("vocab_size", vocab_size, 2)
        self.d_model = _int("d_model", d_model)
        self.n_layers = _int("n_layers", n_layers)
        self.placement = _choice("placement", placement, PLACEMENTS)
        if not float(embed_std) > 0:
            raise ValueError(f"embed_std must be > 0, got {embed_std}")
        self.embed = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed.weight, std=float(embed_std))
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, placement, norm, attention, mlp_ratio, i + 1, n_layers)
            for i in range(n_layers)
        )
        if final_norm is None:
            final_norm = placement in ("pre", "lns")
        self.final_norm = make_norm(norm, d_model) if final_norm else nn.Identity()
        self.head = OutputHead(self.embed, output)
        if zero_init_branches:
            with torch.no_grad():
                for blk in self.blocks:
                    blk.attn.fn.w_o.weight.zero_()
                    blk.mlp.fn.fc2.weight.zero_()
                    blk.mlp.fn.fc2.bias.zero_()

    @property
    def branches(self) -> list[ResidualBranch]:
        """The residual branches in order (attention, MLP, attention, ...): ``2 * n_layers`` of them."""
        return [b for blk in self.blocks for b in (blk.attn, blk.mlp)]

    def new_caches(self, batch_size: int, capacity: int = 0, **kwargs) -> list[KVCache | LatentCache]:
        """One empty KV cache per block (``kwargs`` go to the attention's ``new_cache``)."""
        return [blk.attn.fn.new_cache(batch_size, capacity, **kwargs) for blk in self.blocks]

    def _check_idx(self, idx: torch.Tensor) -> None:
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise TypeError(
                f"idx must be an int64/int32 tensor of token ids, got {getattr(idx, 'dtype', type(idx))}"
            )
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.vocab_size}), got [{int(idx.min())}, {int(idx.max())}]"
            )

    def residual_stream(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """States ``x_0`` (embedding), ``x_1``, ..., ``x_{2L}`` after each branch (no cache)."""
        self._check_idx(idx)
        xs = [self.embed(idx)]
        for br in self.branches:
            xs.append(br(xs[-1]))
        return xs

    def forward(
        self,
        idx: torch.Tensor,
        caches: list[KVCache | LatentCache] | None = None,
        parallel_pair: int | None = None,
    ) -> torch.Tensor:
        """Logits ``(B, T, vocab)`` for token ids ``idx`` ``(B, T)``.

        ``caches`` (from :meth:`new_caches`) continues earlier calls. ``parallel_pair=t`` replaces branches
        ``t, t+1`` by their parallel version: ``x_{t+1} = b_t(x_t)``,
        ``x_{t+2} = combine_{t+1}(x_{t+1}, F_{t+1}(in_{t+1}(x_t)))``.
        """
        self._check_idx(idx)
        if caches is not None and len(caches) != self.n_layers:
            raise ValueError(f"need one cache per block ({self.n_layers}), got {len(caches)}")
        branches = self.branches
        if parallel_pair is not None:
            _int("parallel_pair", parallel_pair, 0)
            if parallel_pair + 1 >= len(branches):
                raise ValueError(f"parallel_pair must be in [0, {len(branches) - 2}], got {parallel_pair}")
            if caches is not None:
                raise ValueError("parallel_pair is a diagnostic; it does not take caches")
        x = self.embed(idx)
        t = 0
        while t < len(branches):
            cache = caches[t // 2] if caches is not None and t % 2 == 0 else None
            if t == parallel_pair:
                a, b = branches[t], branches[t + 1]
                f = b.branch(b.branch_input(x))
                x = b.combine(a(x), f)
                t += 2
                continue
            x = branches[t](x, cache)
            t += 1
        return self.head(self.final_norm(x))


# --- depth diagnostics ------------------------------------------------------------------------


@dataclass
class DepthReport:
    """Per-layer measurements of how much each layer changes the residual stream.

    ``rms[t]`` = RMS of ``x_t`` (``t = 0..N``); ``rho[t]`` = ``||x_{t+1} - x_t|| / ||x_t||`` (``t = 0..N-1``);
    ``delta[t]`` = serial/parallel gap of branches ``t, t+1`` (branch granularity only, else empty);
    ``slope`` = least-squares slope of ``log rho_t`` on ``log t`` for ``t >= 2`` (NaN below 4 layers);
    ``rms_ratio`` = ``RMS(x_N) / RMS(x_2)``.
    """

    granularity: str
    rms: list[float]
    rho: list[float]
    delta: list[float]
    slope: float
    rms_ratio: float


def _loglog_slope(values: list[float], start: int = 2) -> float:
    ts = torch.arange(start, len(values), dtype=torch.float64)
    if len(ts) < 2:
        raise ValueError(
            f"need at least {start + 2} layers to fit a slope from t >= {start}, got {len(values)}"
        )
    ys = torch.tensor(values[start:], dtype=torch.float64).log()
    xs = ts.log()
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc * xc).sum())


@torch.no_grad()
def depth_diagnostics(model: TinyLM, idx: torch.Tensor, granularity: str = "block") -> DepthReport:
    """Stream size, relative update ``rho_t`` (and its log-log slope) and serial/parallel gap ``delta_t``.

    ``granularity="branch"`` counts every attention/MLP branch as a layer; ``"block"`` counts blocks (then
    ``delta`` is not computed). Runs in eval mode on the given batch.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    _choice("granularity", granularity, ("branch", "block"))
    was_training = model.training
    model.eval()
    try:
        xs = model.residual_stream(idx)
        delta: list[float] = []
        if granularity == "branch":
            brs = model.branches
            for t in range(len(brs) - 1):
                b = brs[t + 1]
                serial = b.branch(b.branch_input(xs[t + 1]))
                parallel = b.branch(b.branch_input(xs[t]))
                delta.append(float((serial - parallel).norm() / serial.norm().clamp_min(1e-30)))
        else:
            xs = xs[::2]
    finally:
        model.train(was_training)
    rms = [float(x.pow(2).mean().sqrt()) for x in xs]
    rho = [float((xs[t + 1] - xs[t]).norm() / xs[t].norm()) for t in range(len(xs) - 1)]
    ratio = rms[-1] / rms[2] if len(rms) > 2 else float("nan")
    slope = _loglog_slope(rho) if len(rho) >= 4 else float("nan")
    return DepthReport(granularity, rms, rho, delta, slope, ratio)

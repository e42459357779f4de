"""A small causal language model whose attention layers are chosen per layer.

``TransformerLM`` = token embedding -> ``n_layers`` pre-RMSNorm blocks ``x + Attn(norm(x))``,
``x + MLP(norm(x))`` (GELU, ``mlp_ratio`` x wide) -> RMSNorm -> untied linear head. Each block's
attention follows an :class:`~kexue.nn.attention.AttentionConfig` (RoPE or NoPE, scale policy,
KeyNorm, window, rectified RoPE), so one class covers the baseline, KeyNorm, log-n and the hybrid
window-full layouts (HWFA). Generation uses a KV cache of raw keys, so inference-time position
changes (NTK, YaRN, ReRoPE) stay exact when decoding token by token. Dynamic NTK is the exception
beyond the first layer: cached hidden states of earlier tokens were computed under the base of
their own step (the inconsistency reported in huggingface/transformers#25104), so decoding with a
cache differs slightly from recomputing the whole prefix.

HWFA (post 9603): layers ``0 .. L-2`` are window attention with RoPE and window ``w``, the largest
with ``(w - 1)(L - 1) + 1 <= alpha N`` (N = training length, alpha <= 3/4); the last layer is full
attention without position encoding and with the log-n scale ``log(i+1)/log(N)``. HWFA2 (post 9731):
larger windows, full RoPE layer(s) placed at ``j * L // (f + 1)`` (j = 1..f), switched to ReRoPE at
inference.

Posts: "Transformer升级之路：9、一种全局长度外推的新思路" (2023-05-12, kexue.fm/archives/9603);
"Transformer升级之路：14、当HWFA遇见ReRoPE" (2023-08-24, kexue.fm/archives/9731).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.attention import AttentionConfig, CausalSelfAttention, Extrapolation, LayerKVCache

__all__ = [
    "KVCache",
    "RMSNorm",
    "TransformerConfig",
    "TransformerLM",
    "hwfa_layers",
    "hwfa_window",
]


def _check_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def hwfa_window(n_layers: int, train_length: int, alpha: float = 0.75) -> int:
    """Largest window ``w`` with ``(w - 1)(n_layers - 1) + 1 <= alpha * train_length``."""
    _check_int("n_layers", n_layers, 2)
    _check_int("train_length", train_length)
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    w = int((alpha * train_length - 1) // (n_layers - 1)) + 1
    if w < 1:
        raise ValueError(f"no window fits: alpha * train_length = {alpha * train_length} < 1")
    return w


def hwfa_layers(
    n_layers: int,
    window: int,
    train_length: int,
    *,
    variant: str = "hwfa",
    n_full: int = 1,
    full_logn: bool | None = None,
    rope_base: float = 10000.0,
) -> tuple[AttentionConfig, ...]:
    """Per-layer attention configs of an HWFA (``variant="hwfa"``) or HWFA2 (``"hwfa2"``) stack.

    HWFA: the last ``n_full`` layers are full attention, NoPE, log-n scale (``full_logn`` default True).
    HWFA2: full RoPE layers at indices ``j * n_layers // (n_full + 1)``, log-n off by default.
    """
    _check_int("n_layers", n_layers, 2)
    _check_int("window", window)
    _check_int("n_full", n_full)
    if n_full >= n_layers:
        raise ValueError(f"n_full ({n_full}) must be < n_layers ({n_layers})")
    if variant == "hwfa":
        full = set(range(n_layers - n_full, n_layers))
        logn = True if full_logn is None else full_logn
        full_cfg = AttentionConfig(
            position="none", scale="logn" if logn else "sdpa", train_length=train_length, rope_base=rope_base
        )
    elif variant == "hwfa2":
        full = {j * n_layers // (n_full + 1) for j in range(1, n_full + 1)}
        if len(full) != n_full:
            raise ValueError(f"cannot place {n_full} distinct full layers in {n_layers} layers")
        logn = False if full_logn is None else full_logn
        full_cfg = AttentionConfig(
            scale="logn" if logn else "sdpa", train_length=train_length, rope_base=rope_base
        )
    else:
        raise ValueError(f"variant must be 'hwfa' or 'hwfa2', got {variant!r}")
    win_cfg = AttentionConfig(window=window, train_length=train_length, rope_base=rope_base)
    return tuple(full_cfg if i in full else win_cfg for i in range(n_layers))


@dataclass(frozen=True)
class TransformerConfig:
    """Model size plus the attention config of every layer (``layers`` overrides ``attention``)."""

    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 4
    n_heads: int = 2
    mlp_ratio: int = 4
    attention: AttentionConfig = AttentionConfig()
    layers: tuple[AttentionConfig, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_ratio"):
            _check_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not isinstance(self.attention, AttentionConfig):
            raise TypeError(f"attention must be an AttentionConfig, got {type(self.attention).__name__}")
        if self.layers is not None:
            if len(self.layers) != self.n_layers:
                raise ValueError(
                    f"layers has {len(self.layers)} entries, expected n_layers = {self.n_layers}"
                )
            if not all(isinstance(c, AttentionConfig) for c in self.layers):
                raise TypeError("every entry of layers must be an AttentionConfig")

    def layer(self, i: int) -> AttentionConfig:
        return self.attention if self.layers is None else self.layers[i]

    def with_attention(self, **changes: object) -> TransformerConfig:
        """Copy with ``changes`` applied to every layer's attention config."""
        if self.layers is None:
            return replace(self, attention=replace(self.attention, **changes))
        return replace(self, layers=tuple(replace(c, **changes) for c in self.layers))


class RMSNorm(nn.Module):
    """``x / rms(x) * g``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, attention: AttentionConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = RMSNorm(d_model), RMSNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, attention)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: LayerKVCache | None,
        extrapolation: Extrapolation | None,
    ) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions, cache, extrapolation)
        return x + self.mlp(self.norm2(x))


class KVCache:
    """Per-layer caches plus the number of tokens already processed."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerKVCache() for _ in range(n_layers)]
        self.length = 0


class TransformerLM(nn.Module):
    """Causal byte/token language model; ``forward(idx) -> logits`` of shape ``(B, T, vocab)``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_heads, config.mlp_ratio, config.layer(i))
            for i in range(config.n_layers)
        )
        self.norm = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layers)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        cache: KVCache | None = None,
        extrapolation: Extrapolation | None = None,
        position_offset: int = 0,
    ) -> torch.Tensor:
        """Logits for token ids ``idx`` ``(B, T)``. With ``cache``, ``idx`` continues the cached tokens.

        ``position_offset`` shifts all positions (only relative positions matter for RoPE layers)."""
        if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"idx must be an integer tensor of shape (batch, time), got {idx.dtype} {tuple(idx.shape)}"
            )
        if idx.shape[1] == 0:
            raise ValueError("idx must contain at least one token")
        if extrapolation is not None and not isinstance(extrapolation, Extrapolation):
            raise TypeError(f"extrapolation must be an Extrapolation, got {type(extrapolation).__name__}")
        start = position_offset + (cache.length if cache is not None else 0)
        positions = torch.arange(start, start + idx.shape[1], device=idx.device)
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, None if cache is None else cache.layers[i], extrapolation)
        if cache is not None:
            cache.length += idx.shape[1]
        return self.head(self.norm(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, **kwargs: object) -> torch.Tensor:
        logits = self(idx, **kwargs)  # type: ignore[arg-type]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        extrapolation: Extrapolation | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` tokens (greedy for ``temperature == 0``, else sampled)."""
        _check_int("max_new_tokens", max_new_tokens, 0)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        out = idx
        cache = self.new_cache() if use_cache else None
        logits = self(idx, cache=cache, extrapolation=extrapolation)[:, -1]
        for step in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(-1, keepdim=True)
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            out = torch.cat([out, nxt], dim=1)
            if step + 1 < max_new_tokens:
                if cache is not None:
                    logits = self(nxt, cache=cache, extrapolation=extrapolation)[:, -1]
                else:
                    logits = self(out, extrapolation=extrapolation)[:, -1]
        return out

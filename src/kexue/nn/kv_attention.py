"""Causal self-attention with a KV cache: MHA, MQA, GQA and MLA behind one interface.

Every module maps ``x`` of shape ``(B, T, d_model)`` to ``(B, T, d_model)`` and, given a cache from
``new_cache``, appends the new tokens' keys/values to it and attends over everything cached so far, so
``forward(x[:, :5], cache); forward(x[:, 5:], cache)`` equals ``forward(x)`` restricted to the new rows.
Positions (for RoPE) are ``cache.length + arange(T)``. Row-vector notation, ``h`` query heads:

* **MHA**: ``q^(s) = x W_q^(s)``, ``k^(s) = x W_k^(s)``, ``v^(s) = x W_v^(s)``; cache ``h (d_k + d_v)``
  elements per token and layer.
* **GQA** with ``g | h`` key/value groups: head ``s`` (0-based) reads group ``s // (h/g)`` (consecutive heads
  share a pair); cache ``g (d_k + d_v)``. **MQA** is ``g = 1``: cache ``d_k + d_v``.
* **MLA** (DeepSeek-V2): a joint latent ``c = Norm(x W_c)`` (``d_c``) and an optional query latent
  ``c' = Norm(x W_c')`` (``d_c'``). Per head
  ``q^(s) = [c' W_qc^(s), RoPE(c' W_qr^(s))]``, ``k^(s) = [c W_kc^(s), RoPE(x W_kr)]`` (the RoPE key part,
  ``d_r`` wide, is shared by all heads and computed from ``x``), ``v^(s) = c W_v^(s)``, scale
  ``1/sqrt(d_k + d_r)``. Three inference paths, selected by ``impl``:

  - ``"naive"``: the "MHA form"; caches the expanded per-head keys and values, ``h (d_k + d_r + d_v)``;
  - ``"latent"``: caches ``[c, RoPE(x W_kr)]`` and re-expands all cached latents to per-head keys and values
    at every step (what ``transformers``' DeepSeek-V2 does);
  - ``"absorb"``: the "MQA form"; caches only ``[c, RoPE(x W_kr)]`` (``d_c + d_r``) and absorbs ``W_kc^(s)``
    into the query, ``qa^(s) = (c' W_qc^(s)) W_kc^(s)T``, and ``W_v^(s)`` into the output,
    ``o^(s) = (sum_j p_j c_j) W_v^(s)``: a single shared key/value head of size ``d_c + d_r`` / ``d_c``.

  All three are the same function (exactly, up to rounding) and all are differentiable. The default is
  ``"absorb"`` (so ``new_cache`` and :func:`cache_size` agree on a ``d_c + d_r`` cache); training in the
  MHA form (``impl="naive"``) is cheaper when ``d_c`` is much larger than ``d_k``.

:func:`cache_size` returns the per-token, per-layer cache size (elements and bytes) of a config.

Post: "缓存与效果的极限拉扯：从MHA、MQA、GQA到MLA" (KV-cache versus quality: from MHA, MQA, GQA to MLA),
2024-05-13, kexue.fm/archives/10091. Paper: DeepSeek-AI, "DeepSeek-V2" (arXiv 2405.04434).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.rope import apply_rope, rope_inv_freq

__all__ = [
    "KINDS",
    "MLA_IMPLS",
    "AttentionConfig",
    "CacheSize",
    "GroupedQueryAttention",
    "KVCache",
    "LatentCache",
    "MultiHeadAttention",
    "MultiHeadLatentAttention",
    "MultiQueryAttention",
    "build_attention",
    "cache_size",
]

Kind = Literal["mha", "mqa", "gqa", "mla"]
MLAImpl = Literal["naive", "latent", "absorb"]
KINDS: tuple[str, ...] = ("mha", "mqa", "gqa", "mla")
MLA_IMPLS: tuple[str, ...] = ("naive", "latent", "absorb")


def _pos_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


# --- configuration and cache accounting -------------------------------------------------------


@dataclass(frozen=True)
class AttentionConfig:
    """Shape of one attention layer of any kind.

    ``head_dim`` is ``d_k`` (for MLA: the non-RoPE query/key part), ``v_head_dim`` is ``d_v`` (default
    ``d_k``; default ``d_model // n_heads`` for ``d_k``). ``n_kv_heads`` is the number of key/value groups
    ``g`` (GQA only; MHA uses ``h``, MQA 1). MLA: ``kv_rank`` = ``d_c``, ``q_rank`` = ``d_c'`` (``None``: no
    query compression), ``rope_dim`` = ``d_r`` (0: no decoupled RoPE part), ``latent_norm`` applies an
    RMSNorm to the latents. ``rope`` switches RoPE on for MHA/MQA/GQA (over the whole head); MLA's RoPE
    lives on the ``rope_dim`` part only.
    """

    kind: str
    d_model: int
    n_heads: int
    head_dim: int | None = None
    v_head_dim: int | None = None
    n_kv_heads: int | None = None
    kv_rank: int | None = None
    q_rank: int | None = None
    rope_dim: int = 0
    rope: bool = True
    rope_base: float = 10000.0
    latent_norm: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        _pos_int("d_model", self.d_model)
        _pos_int("n_heads", self.n_heads)
        if self.head_dim is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"head_dim not given and d_model={self.d_model} is not divisible by n_heads={self.n_heads}"
                )
            object.__setattr__(self, "head_dim", self.d_model // self.n_heads)
        _pos_int("head_dim", self.head_dim)
        if self.v_head_dim is None:
            object.__setattr__(self, "v_head_dim", self.head_dim)
        _pos_int("v_head_dim", self.v_head_dim)
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")
        if self.kind == "mla":
            self._check_mla()
            return
        for name in ("kv_rank", "q_rank"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is an MLA option; kind={self.kind!r} does not take it")
        if self.rope_dim:
            raise ValueError(f"rope_dim is an MLA option (kind={self.kind!r} rotates the whole head)")
        if self.rope and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim (pairs of features), got {self.head_dim}")
        expected = {"mha": self.n_heads, "mqa": 1}.get(self.kind)
        if self.n_kv_heads is None:
            if expected is None:
                raise ValueError("kind='gqa' needs n_kv_heads (the number of key/value groups)")
            object.__setattr__(self, "n_kv_heads", expected)
        _pos_int("n_kv_heads", self.n_kv_heads)
        if expected is not None and self.n_kv_heads != expected:
            raise ValueError(
                f"kind={self.kind!r} has n_kv_heads={expected}, got n_kv_heads={self.n_kv_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads={self.n_heads} must be divisible by n_kv_heads (groups)={self.n_kv_heads}"
            )

    def _check_mla(self) -> None:
        if self.n_kv_heads is not None:
            raise ValueError("n_kv_heads is not an MLA option (MLA's cache is one latent per token)")
        if self.kv_rank is None:
            raise ValueError("kind='mla' needs kv_rank (the latent size d_c)")
        if isinstance(self.kv_rank, bool) or not isinstance(self.kv_rank, int):
            raise TypeError(f"kv_rank must be an int, got {type(self.kv_rank).__name__}")
        if self.kv_rank <= 0:
            raise ValueError(f"kv_rank (d_c) must be > 0, got {self.kv_rank}")
        if self.kv_rank > self.d_model:
            raise ValueError(
                f"kv_rank (latent d_c={self.kv_rank}) must not exceed d_model={self.d_model}: "
                "the latent is a compression of x"
            )
        if self.q_rank is not None:
            _pos_int("q_rank", self.q_rank)
            if self.q_rank > self.d_model:
                raise ValueError(f"q_rank (d_c'={self.q_rank}) must not exceed d_model={self.d_model}")
        _pos_int("rope_dim", self.rope_dim, minimum=0)
        if self.rope_dim % 2:
            raise ValueError(f"rope_dim (d_r) must be even (RoPE rotates pairs), got {self.rope_dim}")

    @property
    def groups(self) -> int:
        """Number of distinct key/value heads (MLA: 1, the shared latent)."""
        return 1 if self.kind == "mla" else int(self.n_kv_heads)  # type: ignore[arg-type]

    def cache_elements(self, impl: str | None = None) -> int:
        """Cache elements per token and layer (MLA: ``impl`` is ``"absorb"`` (default), ``"latent"``, ``"naive"``)."""
        dk, dv = int(self.head_dim), int(self.v_head_dim)  # type: ignore[arg-type]
        if self.kind != "mla":
            if impl is not None:
                raise ValueError(f"impl is an MLA option, got impl={impl!r} for kind={self.kind!r}")
            return self.groups * (dk + dv)
        impl = "absorb" if impl is None else impl
        if impl not in MLA_IMPLS:
            raise ValueError(f"impl must be one of {MLA_IMPLS}, got {impl!r}")
        if impl == "naive":
            return self.n_heads * (dk + self.rope_dim + dv)
        return int(self.kv_rank) + self.rope_dim  # type: ignore[arg-type]


@dataclass(frozen=True)
class CacheSize:
    """Cache size per token (for ``n_layers`` layers): ``elements`` and ``bytes`` at ``dtype``."""

    elements: int
    bytes: int
    dtype: torch.dtype
    n_layers: int


def cache_size(
    config: AttentionConfig,
    dtype: torch.dtype = torch.bfloat16,
    n_layers: int = 1,
    impl: str | None = None,
) -> CacheSize:
    """KV-cache size per token of ``n_layers`` layers of ``config``.

    MHA ``h (d_k + d_v)`` (``2 h d_k`` when ``d_v = d_k``), GQA ``g (d_k + d_v)``, MQA ``d_k + d_v``, MLA
    ``d_c + d_r`` (``impl="absorb"`` or ``"latent"``) or ``h (d_k + d_r + d_v)`` (``impl="naive"``).
    """
    if not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be an AttentionConfig, got {type(config).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {type(dtype).__name__}")
    _pos_int("n_layers", n_layers)
    elements = config.cache_elements(impl) * n_layers
    itemsize = torch.empty((), dtype=dtype).element_size()
    return CacheSize(elements=elements, bytes=elements * itemsize, dtype=dtype, n_layers=n_layers)


# --- caches -----------------------------------------------------------------------------------


class _TimeBuffer:
    """A tensor that grows along dimension ``-2`` (time); capacity doubles when full."""

    def __init__(self, lead: tuple[int, ...], width: int, dtype: torch.dtype, device, capacity: int) -> None:
        self.lead, self.width = lead, width
        self.data = torch.empty(*lead, max(capacity, 0), width, dtype=dtype, device=device)
        self.length = 0

    def append(self, new: torch.Tensor) -> torch.Tensor:
        t = new.shape[-2]
        need = self.length + t
        if need > self.data.shape[-2]:
            grown = torch.empty(
                *self.lead,
                max(need, 2 * self.data.shape[-2]),
                self.width,
                dtype=self.data.dtype,
                device=self.data.device,
            )
            grown[..., : self.length, :] = self.data[..., : self.length, :]
            self.data = grown
        self.data[..., self.length : need, :] = new
        self.length = need
        return self.view()

    def view(self) -> torch.Tensor:
        return self.data[..., : self.length, :]


class _Cache(abc.ABC):
    """Common bookkeeping of the caches (dtype, device, length, size)."""

    batch_size: int

    @abc.abstractmethod
    def _buffers(self) -> list[_TimeBuffer]:
        """The time-indexed buffers this cache holds."""

    @property
    def length(self) -> int:
        """Number of cached tokens."""
        return self._buffers()[0].length

    @property
    def dtype(self) -> torch.dtype:
        return self._buffers()[0].data.dtype

    @property
    def device(self) -> torch.device:
        return self._buffers()[0].data.device

    def numel(self) -> int:
        """Elements held for the cached tokens (``batch * length * per-token size``; spare capacity excluded)."""
        return sum(b.view().numel() for b in self._buffers())

    def nbytes(self) -> int:
        """Bytes held for the cached tokens (spare capacity excluded)."""
        return sum(b.view().numel() * b.data.element_size() for b in self._buffers())

    def _check_input(self, x: torch.Tensor) -> None:
        if x.shape[0] != self.batch_size:
            raise ValueError(f"cache holds batch size {self.batch_size}, but x has batch size {x.shape[0]}")
        if x.dtype != self.dtype:
            raise TypeError(f"cache dtype is {self.dtype}, but x has dtype {x.dtype}")


class KVCache(_Cache):
    """Per-group keys ``k`` ``(B, g, T, d_k)`` and values ``v`` ``(B, g, T, d_v)`` of past tokens."""

    def __init__(
        self,
        batch_size: int,
        n_kv_heads: int,
        k_dim: int,
        v_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        capacity: int = 0,
    ) -> None:
        self.batch_size = _pos_int("batch_size", batch_size)
        self.n_kv_heads = _pos_int("n_kv_heads", n_kv_heads)
        self.k_dim, self.v_dim = _pos_int("k_dim", k_dim), _pos_int("v_dim", v_dim)
        _pos_int("capacity", capacity, minimum=0)
        lead = (batch_size, n_kv_heads)
        self._k = _TimeBuffer(lead, k_dim, dtype, device, capacity)
        self._v = _TimeBuffer(lead, v_dim, dtype, device, capacity)

    def _buffers(self) -> list[_TimeBuffer]:
        return [self._k, self._v]

    @property
    def k(self) -> torch.Tensor:
        return self._k.view()

    @property
    def v(self) -> torch.Tensor:
        return self._v.view()

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k`` ``(B, g, t, d_k)`` and ``v`` ``(B, g, t, d_v)``; return all cached keys and values."""
        want_k = (self.batch_size, self.n_kv_heads, k.shape[-2], self.k_dim)
        want_v = (self.batch_size, self.n_kv_heads, k.shape[-2], self.v_dim)
        if tuple(k.shape) != want_k or tuple(v.shape) != want_v:
            raise ValueError(
                f"KVCache expects k of shape (B, g, t, d_k)={want_k} and v {want_v}, "
                f"got k {tuple(k.shape)} and v {tuple(v.shape)}"
            )
        return self._k.append(k), self._v.append(v)


class LatentCache(_Cache):
    """MLA cache: latents ``c`` ``(B, T, d_c)`` and rotated shared RoPE keys ``r`` ``(B, T, d_r)``.

    Both live in one buffer ``(B, T, d_c + d_r)`` (``kv``) so the absorbed path reads them as one key head.
    """

    def __init__(
        self,
        batch_size: int,
        kv_rank: int,
        rope_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
        capacity: int = 0,
    ) -> None:
        self.batch_size = _pos_int("batch_size", batch_size)
        self.kv_rank = _pos_int("kv_rank", kv_rank)
        self.rope_dim = _pos_int("rope_dim", rope_dim, minimum=0)
        _pos_int("capacity", capacity, minimum=0)
        self._buf = _TimeBuffer((batch_size,), kv_rank + rope_dim, dtype, device, capacity)

    def _buffers(self) -> list[_TimeBuffer]:
        return [self._buf]

    @property
    def kv(self) -> torch.Tensor:
        return self._buf.view()

    @property
    def c(self) -> torch.Tensor:
        return self._buf.view()[..., : self.kv_rank]

    @property
    def r(self) -> torch.Tensor:
        return self._buf.view()[..., self.kv_rank :]

    def append(self, c: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Append ``c`` ``(B, t, d_c)`` and ``r`` ``(B, t, d_r)``; return the whole ``(B, T, d_c + d_r)``."""
        want_c = (self.batch_size, c.shape[-2], self.kv_rank)
        want_r = (self.batch_size, c.shape[-2], self.rope_dim)
        if tuple(c.shape) != want_c or tuple(r.shape) != want_r:
            raise ValueError(
                f"LatentCache expects c of shape (B, t, d_c)={want_c} and r {want_r}, "
                f"got c {tuple(c.shape)} and r {tuple(r.shape)}"
            )
        return self._buf.append(torch.cat([c, r], dim=-1) if self.rope_dim else c)


# --- the attention kernel ---------------------------------------------------------------------


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of ``q`` ``(B, G, R, t, d)`` on ``k`` ``(B, G, T, d)``, ``v`` ``(B, G, T, d_v)``.

    The ``R`` query heads of group ``G`` share its key/value head; query ``i`` sits at position
    ``T - t + i`` and sees keys ``0 .. T - t + i``. Returns ``(B, G, R, t, d_v)``.
    """
    b, g, r, t, d = q.shape
    n, dv = k.shape[-2], v.shape[-1]
    # 3-D views for bmm: cache slices are strided views of a larger buffer and must not be copied
    k3, v3 = k.reshape(b * g, n, d), v.reshape(b * g, n, dv)
    s = torch.bmm((q * scale).reshape(b * g, r * t, d), k3.transpose(1, 2)).view(b, g, r, t, n)
    if t > 1:
        future = torch.ones(t, n, dtype=torch.bool, device=q.device).triu(n - t + 1)
        s = s.masked_fill(future, float("-inf"))
    low = s.dtype in (torch.float16, torch.bfloat16)
    p = F.softmax(s, dim=-1, dtype=torch.float32 if low else None).to(v.dtype)
    return torch.bmm(p.view(b * g, r * t, n), v3).view(b, g, r, t, dv)


def _per_head(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, h, t, a)`` times per-head matrices ``w`` ``(h, a, c)`` -> ``(B, h, t, c)`` (one bmm over heads)."""
    b, h, t, a = x.shape
    y = torch.bmm(x.transpose(0, 1).reshape(h, b * t, a), w)
    return y.view(h, b, t, -1).transpose(0, 1)


class _KVAttentionBase(nn.Module):
    config: AttentionConfig

    def _check_x(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3 or x.shape[-1] != self.config.d_model:
            raise ValueError(f"x must have shape (B, T, d_model={self.config.d_model}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating tensor, got {x.dtype}")
        if x.shape[1] == 0:
            raise ValueError("x has no tokens (T = 0)")

    def _positions(self, start: int, t: int, device) -> torch.Tensor:
        return torch.arange(start, start + t, device=device)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return apply_rope(x, pos, self.inv_freq.to(x.device))  # type: ignore[union-attr]

    def cache_size(self, dtype: torch.dtype = torch.bfloat16, impl: str | None = None) -> CacheSize:
        """Per-token cache size of this layer (see :func:`cache_size`)."""
        return cache_size(self.config, dtype=dtype, impl=impl)


class GroupedQueryAttention(_KVAttentionBase):
    """GQA: ``n_heads`` query heads, ``n_kv_heads`` key/value groups (consecutive heads share one).

    ``MultiHeadAttention`` and ``MultiQueryAttention`` are the cases ``g = h`` and ``g = 1``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
        *,
        config: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = AttentionConfig(
                "gqa",
                d_model,
                n_heads,
                head_dim,
                v_head_dim,
                n_kv_heads=n_kv_heads,
                rope=rope,
                rope_base=rope_base,
            )
        self.config = config
        h, g = config.n_heads, config.groups
        dk, dv = int(config.head_dim), int(config.v_head_dim)  # type: ignore[arg-type]
        self.w_q = nn.Linear(config.d_model, h * dk, bias=False)
        self.w_k = nn.Linear(config.d_model, g * dk, bias=False)
        self.w_v = nn.Linear(config.d_model, g * dv, bias=False)
        self.w_o = nn.Linear(h * dv, config.d_model, bias=False)
        # a plain attribute, not a buffer: module.to(bfloat16) must not round the frequencies
        self.inv_freq = rope_inv_freq(dk, config.rope_base, torch.float64) if config.rope else None

    def new_cache(
        self, batch_size: int, capacity: int = 0, dtype: torch.dtype | None = None, device=None
    ) -> KVCache:
        """An empty cache for ``batch_size`` sequences (``capacity`` tokens pre-allocated)."""
        w = self.w_k.weight
        c = self.config
        return KVCache(
            batch_size,
            c.groups,
            int(c.head_dim),
            int(c.v_head_dim),
            dtype or w.dtype,  # type: ignore[arg-type]
            device or w.device,
            capacity,
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Causal attention of ``x`` ``(B, T, d_model)`` (continuing ``cache`` if given, which is updated)."""
        self._check_x(x)
        c = self.config
        b, t, _ = x.shape
        h, g = c.n_heads, c.groups
        dk, dv = int(c.head_dim), int(c.v_head_dim)  # type: ignore[arg-type]
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache (from new_cache), got {type(cache).__name__}")
            if (cache.n_kv_heads, cache.k_dim, cache.v_dim) != (g, dk, dv):
                raise ValueError(
                    f"cache has (groups, d_k, d_v)={(cache.n_kv_heads, cache.k_dim, cache.v_dim)}, "
                    f"this layer needs {(g, dk, dv)}"
                )
            cache._check_input(x)
        start = 0 if cache is None else cache.length
        q = self.w_q(x).view(b, t, h, dk).transpose(1, 2)
        k = self.w_k(x).view(b, t, g, dk).transpose(1, 2)
        v = self.w_v(x).view(b, t, g, dv).transpose(1, 2)
        if self.inv_freq is not None:
            pos = self._positions(start, t, x.device)
            q, k = self._rope(q, pos), self._rope(k, pos)
        if cache is not None:
            k, v = cache.append(k, v)
        o = _attend(q.reshape(b, g, h // g, t, dk), k, v, 1.0 / math.sqrt(dk))
        return self.w_o(o.reshape(b, h, t, dv).transpose(1, 2).reshape(b, t, h * dv))


class MultiHeadAttention(GroupedQueryAttention):
    """MHA: every query head has its own key/value head (GQA with ``n_kv_heads = n_heads``)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
    ) -> None:
        cfg = AttentionConfig("mha", d_model, n_heads, head_dim, v_head_dim, rope=rope, rope_base=rope_base)
        super().__init__(d_model, n_heads, n_heads, config=cfg)


class MultiQueryAttention(GroupedQueryAttention):
    """MQA: all query heads share one key/value head (GQA with ``n_kv_heads = 1``)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        rope: bool = True,
        rope_base: float = 10000.0,
    ) -> None:
        cfg = AttentionConfig("mqa", d_model, n_heads, head_dim, v_head_dim, rope=rope, rope_base=rope_base)
        super().__init__(d_model, n_heads, 1, config=cfg)


class MultiHeadLatentAttention(_KVAttentionBase):
    """MLA (DeepSeek-V2) with the decoupled RoPE part; ``impl`` picks the naive, latent or absorbed path
    (default ``"absorb"``; ``forward(..., impl=...)`` and ``new_cache(..., impl=...)`` override it per call).

    Parameters (nn.Linear weights are ``(out, in)``): ``w_dq`` ``x -> c'`` (or ``w_q`` without query
    compression), ``w_uq`` ``c' -> [q_c^(s)]`` (``h d_k``), ``w_qr`` ``c' -> [q_r^(s)]`` (``h d_r``), ``w_dkv``
    ``x -> c`` (``d_c``), ``w_kr`` ``x -> k_r`` (``d_r``), ``w_uk`` ``c -> [k_c^(s)]`` (``h d_k``), ``w_uv``
    ``c -> [v^(s)]`` (``h d_v``), ``w_o``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        kv_rank: int,
        q_rank: int | None = None,
        head_dim: int | None = None,
        rope_dim: int = 0,
        v_head_dim: int | None = None,
        rope_base: float = 10000.0,
        latent_norm: bool = True,
        impl: str = "absorb",
        *,
        config: AttentionConfig | None = None,
    ) -> None:
        super().__init__()
        if config is None:
            config = AttentionConfig(
                "mla",
                d_model,
                n_heads,
                head_dim,
                v_head_dim,
                kv_rank=kv_rank,
                q_rank=q_rank,
                rope_dim=rope_dim,
                rope_base=rope_base,
                latent_norm=latent_norm,
            )
        if config.kind != "mla":
            raise ValueError(f"MultiHeadLatentAttention needs an MLA config, got kind={config.kind!r}")
        self.config = config
        self.impl = impl
        d, h = config.d_model, config.n_heads
        dk, dv, dr, dc = int(config.head_dim), int(config.v_head_dim), config.rope_dim, int(config.kv_rank)  # type: ignore[arg-type]
        if config.q_rank is not None:
            self.w_dq = nn.Linear(d, config.q_rank, bias=False)
            self.q_norm = nn.RMSNorm(config.q_rank, eps=1e-6) if config.latent_norm else nn.Identity()
            q_in = config.q_rank
        else:
            self.w_dq = None
            self.q_norm = nn.Identity()
            q_in = d
        self.w_uq = nn.Linear(q_in, h * dk, bias=False)
        self.w_qr = nn.Linear(q_in, h * dr, bias=False) if dr else None
        self.w_dkv = nn.Linear(d, dc, bias=False)
        self.kv_norm = nn.RMSNorm(dc, eps=1e-6) if config.latent_norm else nn.Identity()
        self.w_kr = nn.Linear(d, dr, bias=False) if dr else None
        self.w_uk = nn.Linear(dc, h * dk, bias=False)
        self.w_uv = nn.Linear(dc, h * dv, bias=False)
        self.w_o = nn.Linear(h * dv, d, bias=False)
        self.inv_freq = rope_inv_freq(dr, config.rope_base, torch.float64) if dr else None

    @property
    def impl(self) -> str:
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in MLA_IMPLS:
            raise ValueError(f"impl must be one of {MLA_IMPLS}, got {value!r}")
        self._impl = value

    @property
    def scale(self) -> float:
        """``1/sqrt(d_k + d_r)``, the same in every path (not ``1/sqrt(d_c + d_r)`` in the absorbed one)."""
        return 1.0 / math.sqrt(int(self.config.head_dim) + self.config.rope_dim)  # type: ignore[arg-type]

    def new_cache(
        self,
        batch_size: int,
        capacity: int = 0,
        dtype: torch.dtype | None = None,
        device=None,
        impl: str | None = None,
    ) -> KVCache | LatentCache:
        """An empty cache for ``impl`` (default ``self.impl``): KVCache for ``"naive"``, else LatentCache."""
        impl = self._pick(impl)
        c, w = self.config, self.w_dkv.weight
        dtype, device = dtype or w.dtype, device or w.device
        if impl == "naive":
            dk = int(c.head_dim) + c.rope_dim  # type: ignore[arg-type]
            return KVCache(batch_size, c.n_heads, dk, int(c.v_head_dim), dtype, device, capacity)  # type: ignore[arg-type]
        return LatentCache(batch_size, int(c.kv_rank), c.rope_dim, dtype, device, capacity)  # type: ignore[arg-type]

    def _pick(self, impl: str | None) -> str:
        impl = self._impl if impl is None else impl
        if impl not in MLA_IMPLS:
            raise ValueError(f"impl must be one of {MLA_IMPLS}, got {impl!r}")
        return impl

    # pieces shared by the three paths
    def queries(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``q_c`` ``(B, h, T, d_k)`` and rotated ``q_r`` ``(B, h, T, d_r)`` (``None`` when ``d_r = 0``)."""
        c = self.config
        b, t, _ = x.shape
        cq = self.q_norm(self.w_dq(x)) if self.w_dq is not None else x
        qc = self.w_uq(cq).view(b, t, c.n_heads, -1).transpose(1, 2)
        if self.w_qr is None:
            return qc, None
        qr = self.w_qr(cq).view(b, t, c.n_heads, c.rope_dim).transpose(1, 2)
        return qc, self._rope(qr, pos)

    def latents(self, x: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached quantities: ``c`` ``(B, T, d_c)`` and rotated shared RoPE key ``r`` ``(B, T, d_r)``."""
        lat = self.kv_norm(self.w_dkv(x))
        if self.w_kr is None:
            return lat, x.new_zeros(*x.shape[:2], 0)
        return lat, self._rope(self.w_kr(x), pos)

    def expand(self, lat: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-head keys ``[c W_kc^(s), r]`` ``(B, h, T, d_k + d_r)`` and values ``(B, h, T, d_v)``."""
        c = self.config
        b, t, _ = lat.shape
        kc = self.w_uk(lat).view(b, t, c.n_heads, -1).transpose(1, 2)
        v = self.w_uv(lat).view(b, t, c.n_heads, -1).transpose(1, 2)
        if c.rope_dim:
            kc = torch.cat([kc, r.unsqueeze(1).expand(b, c.n_heads, t, c.rope_dim)], dim=-1)
        return kc, v

    def forward(
        self, x: torch.Tensor, cache: KVCache | LatentCache | None = None, impl: str | None = None
    ) -> torch.Tensor:
        """Causal MLA of ``x`` ``(B, T, d_model)``; continues and updates ``cache`` if given."""
        self._check_x(x)
        impl = self._pick(impl)
        c = self.config
        b, t, _ = x.shape
        h, dk, dv, dr = c.n_heads, int(c.head_dim), int(c.v_head_dim), c.rope_dim  # type: ignore[arg-type]
        if cache is not None:
            want = KVCache if impl == "naive" else LatentCache
            if not isinstance(cache, want):
                raise TypeError(
                    f"impl={impl!r} needs a {want.__name__} (new_cache(..., impl={impl!r})), "
                    f"got {type(cache).__name__}"
                )
            if isinstance(cache, KVCache):
                dims, need = (cache.n_kv_heads, cache.k_dim, cache.v_dim), (h, dk + dr, dv)
            else:
                dims, need = (cache.kv_rank, cache.rope_dim), (int(c.kv_rank), dr)  # type: ignore[arg-type]
            if dims != need:
                raise ValueError(f"cache dimensions {dims} do not match this layer's {need}")
            cache._check_input(x)
        start = 0 if cache is None else cache.length
        pos = self._positions(start, t, x.device)
        qc, qr = self.queries(x, pos)
        lat, r = self.latents(x, pos)
        if impl == "naive":
            k, v = self.expand(lat, r)
            if cache is not None:
                k, v = cache.append(k, v)  # type: ignore[union-attr]
            q = torch.cat([qc, qr], dim=-1) if qr is not None else qc
            o = _attend(q.unsqueeze(2), k, v, self.scale).squeeze(2)
        elif impl == "latent":
            if cache is not None:
                kv = cache.append(lat, r)  # type: ignore[union-attr]
                lat, r = kv[..., : c.kv_rank], kv[..., c.kv_rank :]
            k, v = self.expand(lat, r)
            q = torch.cat([qc, qr], dim=-1) if qr is not None else qc
            o = _attend(q.unsqueeze(2), k, v, self.scale).squeeze(2)
        else:
            # absorb W_kc into the query: qa^(s) = q_c^(s) W_kc^(s)T, (B, h, T, d_c)
            qa = _per_head(qc, self.w_uk.weight.view(h, dk, -1))
            q = torch.cat([qa, qr], dim=-1) if qr is not None else qa
            kv = cache.append(lat, r) if cache is not None else (torch.cat([lat, r], -1) if dr else lat)  # type: ignore[union-attr]
            # one shared key head [c, r] and value head c: MLA decodes as MQA
            u = _attend(q.unsqueeze(1), kv.unsqueeze(1), kv[..., : c.kv_rank].unsqueeze(1), self.scale)
            # absorb W_v into the output: o^(s) = u^(s) W_v^(s)
            o = _per_head(u.squeeze(1), self.w_uv.weight.view(h, dv, -1).transpose(1, 2))
        return self.w_o(o.transpose(1, 2).reshape(b, t, h * dv))


def build_attention(config: AttentionConfig) -> GroupedQueryAttention | MultiHeadLatentAttention:
    """The attention module described by ``config``."""
    if not isinstance(config, AttentionConfig):
        raise TypeError(f"config must be an AttentionConfig, got {type(config).__name__}")
    if config.kind == "mla":
        return MultiHeadLatentAttention(config.d_model, config.n_heads, int(config.kv_rank), config=config)  # type: ignore[arg-type]
    return GroupedQueryAttention(config.d_model, config.n_heads, config.groups, config=config)

"""Vector quantisation with a learned codebook: STE or rotation-trick gradients, plain or SimVQ codebooks.

``z`` (encoder output, ``(..., dim)``) is replaced by its nearest code ``q = c_k``, ``k = argmin_i ||z - c_i||^2``
(``argmax_i <z, c_i>`` after L2-normalising both with ``cosine=True``). The search computes
``||c_i||^2 - 2 <z, c_i>`` in row chunks of at most ``max_distance_elements`` scores, so big codebooks do not
materialise an ``N x K`` matrix. Losses (element-wise means, ``sg`` = stop-gradient)::

    loss = codebook_weight * ||q - sg(z)||^2 + commitment_weight * ||z - sg(q)||^2

Gradient through the lookup (see :mod:`kexue.quantizers.rotation`): ``grad="ste"`` copies the decoder
gradient to ``z``; ``grad="rotation"`` applies the rotation trick (``lambda R^T g``, Householder form, no
``d x d`` matrix). The forward value is exactly ``q`` in both cases and no gradient reaches the codebook
through this path - only through its own loss.

Codebooks:

* ``codebook="plain"``: ``C`` is a ``K x dim`` parameter learned by the codebook loss, or a buffer updated by
  EMA (``ema_decay=0.8`` etc.: ``N_k <- a N_k + (1-a) n_k``, ``S_k <- a S_k + (1-a) sum_{z->k} z``,
  ``c_k = S_k / N~_k`` with Laplace-smoothed ``N~``; the codebook loss is then dropped).
* ``codebook="linear"`` (SimVQ): ``C = E W`` with ``E`` (``K x codebook_dim``) drawn from ``N(0, 1/codebook_dim)``
  and frozen, ``W`` a learned ``nn.Linear(codebook_dim, dim, bias=linear_bias)`` (no bias by default, as the
  peer; the official code has one). ``C`` is computed once per forward; ``W`` is trained by the codebook
  loss, so every code moves when ``W`` does. ``trainable_basis=True`` also trains ``E``.
* ``codebook="diagonal"``: the post's variant ``C = E * w`` with a learned gain vector ``w`` (initialised to
  ones) and, by default, a trainable ``E``.

Options users of ``vector-quantize-pytorch`` expect and that are offered: cosine similarity
(``cosine=True``), k-means initialisation on the first training batch (``kmeans_init=True``), EMA codebook
updates (``ema_decay``), dead-code replacement (``dead_code_threshold``: a code whose running usage
per step falls below the threshold is reset to a random vector of the current batch; with a loss-learned
codebook the optimiser's state for that row is left as it is). Not offered (use the
peer for these): multiple heads / separate codebooks, residual or grouped VQ, stochastic (Gumbel) code
sampling, affine re-parameterisation, orthogonal regularisation, masks, distributed k-means / EMA syncing.

Usage statistics (utilisation, perplexity, dead codes) are counted in training mode: ``vq.usage()``.
``torch.compile`` captures STE / rotation / EMA / SimVQ forwards as one graph; k-means initialisation and
dead-code replacement are data-dependent and cause graph breaks.

Posts: "VQ的旋转技巧：梯度直通估计的一般推广" (The rotation trick for VQ), 2024-10-24,
kexue.fm/archives/10489; "VQ的又一技巧：给编码表加一个线性变换" (Another VQ trick: put a linear transform
on the codebook), 2024-11-06, kexue.fm/archives/10519; the VQ-VAE recap in "简单得令人尴尬的FSQ"
(2023-10-31, kexue.fm/archives/9826).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from kexue.quantizers.rotation import rotation_trick, straight_through
from kexue.quantizers.stats import UsageTracker

__all__ = ["LossBreakdown", "VQOutput", "VectorQuantizer", "kmeans", "nearest_codes"]


class VQOutput(NamedTuple):
    """``(quantized, indices, loss)`` as returned by :class:`VectorQuantizer`."""

    quantized: torch.Tensor
    indices: torch.Tensor
    loss: torch.Tensor


class LossBreakdown(NamedTuple):
    """Unweighted auxiliary losses: ``commitment = ||z - sg(q)||^2``, ``codebook = ||q - sg(z)||^2``."""

    commitment: torch.Tensor
    codebook: torch.Tensor


_BLOCK = 64


def _arg_best(scores: torch.Tensor, largest: bool) -> torch.Tensor:
    """Row-wise argmin (argmax), first occurrence on ties, as a blocked reduction.

    A plain ``argmin`` over rows is not vectorised on CPU; ``amin`` over blocks of 64 scores is, so the
    winning block is found first and the argmin runs only inside it (same result, 2-3x faster).
    """
    n, k = scores.shape
    if k % _BLOCK or k < 4 * _BLOCK:
        return scores.argmax(dim=1) if largest else scores.argmin(dim=1)
    blocks = scores.view(n, k // _BLOCK, _BLOCK)
    if largest:
        best_block = blocks.amax(dim=2).argmax(dim=1)
        inner = blocks[torch.arange(n, device=scores.device), best_block].argmax(dim=1)
    else:
        best_block = blocks.amin(dim=2).argmin(dim=1)
        inner = blocks[torch.arange(n, device=scores.device), best_block].argmin(dim=1)
    return best_block * _BLOCK + inner


def nearest_codes(
    x: torch.Tensor, codebook: torch.Tensor, *, cosine: bool = False, max_distance_elements: int = 2**24
) -> torch.Tensor:
    """Index of the nearest row of ``codebook`` (``K x d``) for every row of ``x`` (``N x d``), int64 ``(N,)``.

    Euclidean: ``argmin_i ||c_i||^2 - 2 <x, c_i>``; ``cosine=True``: ``argmax_i <x, c_i>`` (inputs assumed
    normalised). Rows are processed in chunks of ``max(1, max_distance_elements // K)``. No gradient.
    """
    if x.ndim != 2 or codebook.ndim != 2 or x.shape[1] != codebook.shape[1]:
        raise ValueError(
            f"x must be (N, d) and codebook (K, d) with the same d, got {tuple(x.shape)} and "
            f"{tuple(codebook.shape)}"
        )
    with torch.no_grad():
        x = x.detach()
        cb_t = codebook.detach().t()
        k = codebook.shape[0]
        rows = max(1, int(max_distance_elements) // k)
        c2 = None if cosine else (codebook.detach() ** 2).sum(dim=1)
        out = []
        for start in range(0, x.shape[0], rows):
            chunk = x[start : start + rows]
            if cosine:
                out.append(_arg_best(chunk @ cb_t, largest=True))
            else:
                out.append(_arg_best(torch.addmm(c2, chunk, cb_t, alpha=-2.0), largest=False))
        if len(out) == 1:
            return out[0]
        if not out:
            return torch.zeros(0, dtype=torch.int64, device=x.device)
        return torch.cat(out)


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    iters: int = 10,
    *,
    cosine: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the rows of ``x`` (``N x d``): returns ``(centroids (K, d), counts (K,))``.

    Centroids are seeded by k-means++ (``generator`` makes it reproducible); a cluster that empties keeps
    its previous centroid. ``cosine=True`` is spherical k-means (normalised centroids).
    """
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"x must be a non-empty (N, d) tensor, got shape {tuple(x.shape)}")
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 1:
        raise ValueError(f"num_clusters must be an int >= 1, got {num_clusters!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 0:
        raise ValueError(f"iters must be an int >= 0, got {iters!r}")
    x = x.detach()
    centroids = _kmeans_plus_plus(x, num_clusters, cosine=cosine, generator=generator)
    counts = torch.zeros(num_clusters, dtype=x.dtype, device=x.device)
    for _ in range(max(iters, 1)):
        idx = nearest_codes(x, centroids, cosine=cosine)
        counts = torch.zeros(num_clusters, dtype=x.dtype, device=x.device).index_add_(
            0, idx, torch.ones_like(idx, dtype=x.dtype)
        )
        if iters == 0:
            break
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        new = sums / counts.clamp_min(1.0)[:, None]
        if cosine:
            new = F.normalize(new, dim=-1)
        centroids = torch.where(counts[:, None] > 0, new, centroids)
    return centroids, counts


def _kmeans_plus_plus(
    x: torch.Tensor, num_clusters: int, *, cosine: bool, generator: torch.Generator | None
) -> torch.Tensor:
    """k-means++ seeding: each next centre is a row drawn with probability proportional to its squared
    distance to the nearest centre chosen so far (uniform when every row is already a centre)."""
    n = x.shape[0]
    first = int(torch.randint(0, n, (1,), generator=generator))
    chosen = [first]
    if cosine:
        min_d2 = (2.0 - 2.0 * (x @ x[first])).clamp_min(0.0)
    else:
        min_d2 = ((x - x[first]) ** 2).sum(dim=1)
    for _ in range(num_clusters - 1):
        weights = min_d2.double().cpu()
        if float(weights.sum()) <= 0.0:
            nxt = int(torch.randint(0, n, (1,), generator=generator))
        else:
            nxt = int(torch.multinomial(weights, 1, generator=generator))
        chosen.append(nxt)
        if cosine:
            d2 = (2.0 - 2.0 * (x @ x[nxt])).clamp_min(0.0)
        else:
            d2 = ((x - x[nxt]) ** 2).sum(dim=1)
        min_d2 = torch.minimum(min_d2, d2)
    return x[torch.tensor(chosen, device=x.device)].clone()


def _positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class VectorQuantizer(UsageTracker):
    """Nearest-neighbour vector quantiser; ``forward(x) -> VQOutput(quantized, indices, loss)``.

    Args:
        dim: vector width (last axis, or axis 1 for channel-first input).
        codebook_size: number of codes ``K >= 2``.
        grad: ``"ste"`` or ``"rotation"`` (the rotation trick); ``rotation_rescale=False`` drops ``lambda``.
        codebook: ``"plain"``, ``"linear"`` (SimVQ, ``C = E W``) or ``"diagonal"`` (``C = E * w``).
        codebook_dim: width of the frozen basis ``E`` for ``"linear"`` (default ``dim``).
        commitment_weight: weight of ``||z - sg(q)||^2`` (default 0.25).
        codebook_weight: weight of ``||q - sg(z)||^2`` (default 1, and 0 with EMA).
        ema_decay: EMA codebook update with this decay (``"plain"`` only) instead of the codebook loss.
        ema_eps: Laplace smoothing of the EMA cluster sizes.
        init: plain-codebook init, ``"uniform"`` = ``U(-1/K, 1/K)`` (VQ-VAE; default without EMA) or
            ``"normal"`` = ``N(0, 1)`` (default with EMA).
        kmeans_init: initialise the plain codebook by k-means on the first training batch.
        kmeans_iters: Lloyd iterations for ``kmeans_init``.
        cosine: L2-normalise vectors and codes; lookup by cosine similarity; outputs are unit vectors.
        dead_code_threshold: replace codes whose running usage (expected tokens per step, EMA with
            ``dead_code_decay``, or the EMA cluster size when ``ema_decay`` is set) is below it; 0 = off.
        linear_bias: bias in SimVQ's ``W``.
        trainable_basis: train ``E`` too (default False for ``"linear"``, True for ``"diagonal"``).
        channel_first: ``None`` = axis 1 for inputs with >= 4 dims (images), last axis otherwise.
        max_distance_elements: bound on the ``rows x K`` score chunk of the nearest-neighbour search.
        seed: seeds the module's own generator (init, k-means, dead-code sampling); ``None`` uses torch's.
        track_usage: count code usage in training mode (read with :meth:`usage`).
    """

    def __init__(
        self,
        dim: int,
        codebook_size: int,
        *,
        grad: str = "ste",
        codebook: str = "plain",
        codebook_dim: int | None = None,
        commitment_weight: float = 0.25,
        codebook_weight: float | None = None,
        ema_decay: float | None = None,
        ema_eps: float = 1e-5,
        init: str | None = None,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        cosine: bool = False,
        dead_code_threshold: float = 0.0,
        dead_code_decay: float = 0.99,
        rotation_rescale: bool = True,
        linear_bias: bool = False,
        trainable_basis: bool | None = None,
        channel_first: bool | None = None,
        max_distance_elements: int = 2**24,
        seed: int | None = None,
        track_usage: bool = True,
    ) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.codebook_size = _positive_int("codebook_size", codebook_size, minimum=2)
        if grad not in ("ste", "rotation"):
            raise ValueError(f"grad must be 'ste' or 'rotation', got {grad!r}")
        if codebook not in ("plain", "linear", "diagonal"):
            raise ValueError(f"codebook must be 'plain', 'linear' or 'diagonal', got {codebook!r}")
        self.grad = grad
        self.codebook_kind = codebook
        self.rotation_rescale = bool(rotation_rescale)
        self.cosine = bool(cosine)
        self.channel_first = channel_first
        self.max_distance_elements = _positive_int("max_distance_elements", max_distance_elements)

        if ema_decay is not None:
            if not isinstance(ema_decay, (int, float)) or not 0.0 < float(ema_decay) < 1.0:
                raise ValueError(f"ema_decay must be in (0, 1) or None, got {ema_decay!r}")
            if codebook != "plain":
                raise ValueError(
                    f"EMA updates overwrite codes and would bypass the {codebook!r} codebook's parameters; "
                    "use ema_decay=None with codebook='linear'/'diagonal'"
                )
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.ema_eps = float(ema_eps)
        if codebook_weight is None:
            codebook_weight = 0.0 if self.ema_decay is not None else 1.0
        for name, w in (("commitment_weight", commitment_weight), ("codebook_weight", codebook_weight)):
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {w!r}")
        if self.ema_decay is not None and codebook_weight > 0:
            raise ValueError("with ema_decay the codebook is updated by EMA; codebook_weight must be 0")
        if codebook != "plain" and codebook_weight <= 0:
            raise ValueError(
                f"the {codebook!r} codebook is trained by the codebook loss; codebook_weight must be > 0"
            )
        self.commitment_weight = float(commitment_weight)
        self.codebook_weight = float(codebook_weight)

        if init is not None and codebook != "plain":
            raise ValueError(f"init applies to the plain codebook only; the {codebook!r} basis is N(0, 1/d)")
        if init is None:
            init = "normal" if self.ema_decay is not None else "uniform"
        if init not in ("uniform", "normal"):
            raise ValueError(f"init must be 'uniform' or 'normal', got {init!r}")
        if kmeans_init and codebook != "plain":
            raise ValueError("kmeans_init applies to the plain codebook only")
        self.kmeans_init = bool(kmeans_init)
        self.kmeans_iters = _positive_int("kmeans_iters", kmeans_iters, minimum=0)
        if not isinstance(dead_code_threshold, (int, float)) or dead_code_threshold < 0:
            raise ValueError(f"dead_code_threshold must be >= 0, got {dead_code_threshold!r}")
        if dead_code_threshold > 0 and codebook != "plain":
            raise ValueError("dead-code replacement applies to the plain codebook only")
        if not 0.0 < float(dead_code_decay) < 1.0:
            raise ValueError(f"dead_code_decay must be in (0, 1), got {dead_code_decay!r}")
        self.dead_code_threshold = float(dead_code_threshold)
        self.dead_code_decay = float(dead_code_decay)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
        self._generator = None if seed is None else torch.Generator().manual_seed(seed)

        k = self.codebook_size
        if codebook == "plain":
            if codebook_dim is not None and codebook_dim != dim:
                raise ValueError("codebook_dim is the SimVQ basis width; the plain codebook has width dim")
            if trainable_basis is not None or linear_bias:
                raise ValueError("trainable_basis / linear_bias apply to codebook='linear'/'diagonal' only")
            if init == "uniform":
                embed = torch.rand(k, dim, generator=self._generator) * (2.0 / k) - 1.0 / k
            else:
                embed = torch.randn(k, dim, generator=self._generator)
            if self.cosine:
                embed = F.normalize(embed, dim=-1)
            if self.ema_decay is None:
                self.embed = nn.Parameter(embed)
            else:
                self.register_buffer("embed", embed)
                self.register_buffer("ema_cluster_size", torch.ones(k))
                self.register_buffer("ema_embed_sum", embed.clone())
            self.register_buffer("initialised", torch.tensor(not self.kmeans_init))
            if self.dead_code_threshold > 0 and self.ema_decay is None:
                self.register_buffer("usage_ema", torch.ones(k))
        else:
            basis_dim = dim if codebook_dim is None else _positive_int("codebook_dim", codebook_dim)
            if codebook == "diagonal" and basis_dim != dim:
                raise ValueError(f"the diagonal codebook needs codebook_dim == dim, got {basis_dim} != {dim}")
            self.basis_dim = basis_dim
            basis = torch.randn(k, basis_dim, generator=self._generator) * basis_dim**-0.5
            if trainable_basis is None:
                trainable_basis = codebook == "diagonal"
            self.trainable_basis = bool(trainable_basis)
            if self.trainable_basis:
                self.basis = nn.Parameter(basis)
            else:
                self.register_buffer("basis", basis)
            if codebook == "linear":
                self.transform = nn.Linear(basis_dim, dim, bias=bool(linear_bias))
            else:
                if linear_bias:
                    raise ValueError("linear_bias applies to codebook='linear' only")
                self.scale = nn.Parameter(torch.ones(dim))
        self._init_usage(k, track_usage)

    def extra_repr(self) -> str:
        parts = [f"dim={self.dim}", f"codebook_size={self.codebook_size}", f"grad={self.grad!r}"]
        parts.append(f"codebook={self.codebook_kind!r}")
        if self.ema_decay is not None:
            parts.append(f"ema_decay={self.ema_decay}")
        if self.cosine:
            parts.append("cosine=True")
        return ", ".join(parts)

    # --- codebook ----------------------------------------------------------------------------------

    @property
    def codebook(self) -> torch.Tensor:
        """The effective ``K x dim`` codebook (``E W`` / ``E * w`` for SimVQ; carries gradient when learned)."""
        if self.codebook_kind == "plain":
            return self.embed
        if self.codebook_kind == "linear":
            return self.transform(self.basis)
        return self.basis * self.scale

    def _lookup_codebook(self) -> torch.Tensor:
        cb = self.codebook
        return F.normalize(cb, dim=-1) if self.cosine else cb

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (what ``forward`` outputs, channel axis last) for integer ``indices`` of any shape."""
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        return F.embedding(indices.to(torch.int64), self._lookup_codebook())

    @torch.no_grad()
    def materialise(self) -> VectorQuantizer:
        """A plain :class:`VectorQuantizer` whose codebook is the current effective codebook (for deployment)."""
        vq = VectorQuantizer(
            self.dim,
            self.codebook_size,
            grad=self.grad,
            commitment_weight=self.commitment_weight,
            codebook_weight=max(self.codebook_weight, 0.0),
            cosine=self.cosine,
            rotation_rescale=self.rotation_rescale,
            channel_first=self.channel_first,
            max_distance_elements=self.max_distance_elements,
            track_usage=self.track_usage,
        )
        cb = self.codebook.detach()
        vq = vq.to(device=cb.device, dtype=cb.dtype)
        vq.embed.data.copy_(cb)
        return vq

    # --- training-time updates ---------------------------------------------------------------------

    @torch.no_grad()
    def _kmeans_init_(self, z: torch.Tensor) -> None:
        centroids, counts = kmeans(
            z, self.codebook_size, self.kmeans_iters, cosine=self.cosine, generator=self._generator
        )
        self.embed.data.copy_(centroids)
        if self.ema_decay is not None:
            self.ema_cluster_size.copy_(counts)
            self.ema_embed_sum.copy_(centroids * counts[:, None])
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update_codebook_(self, z: torch.Tensor, indices: torch.Tensor) -> None:
        k = self.codebook_size
        counts = torch.zeros(k, dtype=z.dtype, device=z.device).index_add_(
            0, indices, torch.ones_like(indices, dtype=z.dtype)
        )
        if self.ema_decay is not None:
            a = self.ema_decay
            sums = torch.zeros(k, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, indices, z)
            self.ema_cluster_size.mul_(a).add_(counts, alpha=1.0 - a)
            self.ema_embed_sum.mul_(a).add_(sums, alpha=1.0 - a)
            n = self.ema_cluster_size.sum()
            smoothed = (self.ema_cluster_size + self.ema_eps) / (n + k * self.ema_eps) * n
            new = self.ema_embed_sum / smoothed[:, None]
            self.embed.copy_(F.normalize(new, dim=-1) if self.cosine else new)
        if self.dead_code_threshold > 0:
            if self.ema_decay is None:
                self.usage_ema.mul_(self.dead_code_decay).add_(counts, alpha=1.0 - self.dead_code_decay)
                running = self.usage_ema
            else:
                running = self.ema_cluster_size
            dead = (running < self.dead_code_threshold).nonzero().flatten()
            if dead.numel():
                self._replace_codes_(dead, z)

    def _replace_codes_(self, dead: torch.Tensor, z: torch.Tensor) -> None:
        n = z.shape[0]
        if dead.numel() > n:  # more dead codes than samples: replace a random subset now, the rest later
            dead = dead[torch.randperm(dead.numel(), generator=self._generator)[:n].to(dead.device)]
        pick = torch.randperm(n, generator=self._generator)[: dead.numel()].to(z.device)
        samples = z[pick]
        self.embed.data[dead] = samples.to(self.embed.dtype)
        reset = torch.full((dead.numel(),), self.dead_code_threshold, dtype=z.dtype, device=z.device)
        if self.ema_decay is not None:
            self.ema_cluster_size[dead] = reset
            self.ema_embed_sum[dead] = samples * reset[:, None]
        else:
            self.usage_ema[dead] = reset

    # --- forward -------------------------------------------------------------------------------------

    def _is_channel_first(self, ndim: int) -> bool:
        return self.channel_first if self.channel_first is not None else ndim >= 4

    def forward(
        self, x: torch.Tensor, return_loss_breakdown: bool = False
    ) -> VQOutput | tuple[torch.Tensor, torch.Tensor, torch.Tensor, LossBreakdown]:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"input must be a floating-point tensor, got dtype {x.dtype}")
        channel_first = self._is_channel_first(x.ndim)
        if channel_first:
            if x.ndim < 2:
                raise ValueError(f"channel-first input needs >= 2 dimensions, got shape {tuple(x.shape)}")
            x = x.movedim(1, -1)
        if x.ndim < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"input must have {self.dim} channels, got shape {tuple(x.shape)}")
        if not torch.compiler.is_compiling() and bool(torch.isnan(x).any()):
            raise ValueError("VectorQuantizer input contains NaN")
        lead = x.shape[:-1]
        orig_dtype = x.dtype
        z = x.reshape(-1, self.dim)
        if orig_dtype not in (torch.float32, torch.float64):
            z = z.float()
        if self.kmeans_init and self.training and not bool(self.initialised):
            self._kmeans_init_(F.normalize(z.detach(), dim=-1) if self.cosine else z.detach())

        cb = self._lookup_codebook()
        if cb.dtype != z.dtype:
            cb = cb.to(z.dtype)
        if self.cosine:
            z = F.normalize(z, dim=-1)
        indices = nearest_codes(z, cb, cosine=self.cosine, max_distance_elements=self.max_distance_elements)
        q = F.embedding(indices, cb)

        commitment = F.mse_loss(z, q.detach())
        if self.codebook_weight > 0:
            codebook_loss = F.mse_loss(q, z.detach())
            loss = self.commitment_weight * commitment + self.codebook_weight * codebook_loss
        else:
            codebook_loss = torch.zeros((), dtype=z.dtype, device=z.device)
            loss = self.commitment_weight * commitment

        if self.grad == "rotation":
            zq = rotation_trick(z, q, rescale=self.rotation_rescale)
        else:
            zq = straight_through(z, q)

        if self.training:
            if self.ema_decay is not None or self.dead_code_threshold > 0:
                self._update_codebook_(z.detach(), indices)
            self._record_usage(indices)

        out = zq.to(orig_dtype).reshape(*lead, self.dim)
        if channel_first:
            out = out.movedim(-1, 1)
        indices = indices.reshape(lead)
        if return_loss_breakdown:
            return out, indices, loss, LossBreakdown(commitment.detach(), codebook_loss.detach())
        return VQOutput(out, indices, loss)

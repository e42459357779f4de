"""Random segmentation: the target law, three one-pass samplers, and their exact output laws.

"随机分词浅探：从Viterbi Decoding到Viterbi Sampling" (2023-09, kexue.fm/archives/9768) and
"随机分词再探：从Viterbi Sampling到完美采样算法" (2023-10-16, kexue.fm/archives/9811).

Target: ``P_alpha(seg | x) = exp(alpha * S(seg)) / Z_alpha(x)`` with ``S(seg) = sum_k l(x[b_{k-1}:b_k])``.
All three samplers visit the edges ``(s, e)`` grouped by end ``e`` ascending and keep one back-pointer
per end (the first candidate of an end is always accepted):

* ``"v1"`` (post 9768): ``c = score[s] + l``; accept with probability ``sigmoid(alpha * (c - score[e]))``,
  then ``score[e] = c``. Biased.
* ``"intermediate"`` (bytepiece code of 2023-10-14): ``c = score[s] + alpha * l``;
  ``R[e] = logaddexp(R[e], c)``; accept with probability ``exp(c - R[e])``, then ``score[e] = c``. Biased.
* ``"perfect"`` (post 9811): ``c = Z[s] + alpha * l``; ``Z[e] = logaddexp(Z[e], c)``; accept with
  probability ``exp(c - Z[e])``. Then ``P(back[e] = s) = exp(Z[s] + alpha * l - Z[e])`` and the product
  along a path telescopes to ``P_alpha(seg)``: exact for every ``alpha >= 0`` and any edge order.

:func:`sampler_law` computes a sampler's output law exactly by branching on every accept/reject
decision (merging identical states), so bias is measured without Monte-Carlo noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from kexue.tokenizers.reference import logaddexp

VARIANTS = ("perfect", "v1", "intermediate")
ORDERS = ("shortest", "longest")

Segmentation = tuple[bytes, ...]


def _check(x: bytes, logp: Mapping[bytes, float], alpha: float) -> None:
    if not isinstance(x, bytes):
        raise TypeError(f"text must be bytes, got {type(x).__name__}")
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, (int, float))
        or not math.isfinite(alpha)
        or alpha < 0
    ):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    for p in logp:
        if not isinstance(p, bytes) or not p:
            raise TypeError("vocabulary pieces must be non-empty bytes")


def segmentations(x: bytes, vocab: Mapping[bytes, float] | set[bytes]) -> list[Segmentation]:
    """Every segmentation of ``x`` into pieces of ``vocab`` (brute force)."""
    maxlen = max((len(p) for p in vocab), default=0)
    memo: dict[int, list[Segmentation]] = {len(x): [()]}

    def rest(i: int) -> list[Segmentation]:
        if i not in memo:
            memo[i] = [
                (x[i:j],) + tail
                for j in range(i + 1, min(len(x), i + maxlen) + 1)
                if x[i:j] in vocab
                for tail in rest(j)
            ]
        return memo[i]

    return rest(0)


def count_segmentations(x: bytes, vocab: Mapping[bytes, float] | set[bytes]) -> int:
    """Number of segmentations of ``x`` (dynamic programming)."""
    maxlen = max((len(p) for p in vocab), default=0)
    n = len(x)
    ways = [1] + [0] * n
    for e in range(1, n + 1):
        ways[e] = sum(ways[s] for s in range(max(0, e - maxlen), e) if x[s:e] in vocab)
    return ways[n]


def score(seg: Segmentation, logp: Mapping[bytes, float]) -> float:
    return math.fsum(logp[p] for p in seg)


def target_law(x: bytes, logp: Mapping[bytes, float], alpha: float) -> dict[Segmentation, float]:
    """``P_alpha(seg | x)`` for every segmentation, by enumeration."""
    _check(x, logp, alpha)
    segs = segmentations(x, logp)
    w = [alpha * score(s, logp) for s in segs]
    m = max(w)
    z = math.fsum(math.exp(v - m) for v in w)
    return {s: math.exp(v - m) / z for s, v in zip(segs, w)}


def log_partition(x: bytes, logp: Mapping[bytes, float], alpha: float) -> float:
    """``log Z_alpha(x) = log sum_seg exp(alpha * S(seg))`` by enumeration."""
    w = [alpha * score(s, logp) for s in segmentations(x, logp)]
    m = max(w)
    return m + math.log(math.fsum(math.exp(v - m) for v in w))


def total_variation(p: Mapping, q: Mapping) -> float:
    """``0.5 * sum |p - q|`` over the union of supports."""
    return 0.5 * math.fsum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def _candidates(x: bytes, logp: Mapping[bytes, float], order: str) -> list[list[tuple[int, float]]]:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    maxlen = max(len(p) for p in logp)
    cands: list[list[tuple[int, float]]] = [[]]
    for e in range(1, len(x) + 1):
        c = [(s, logp[x[s:e]]) for s in range(e - 1, max(0, e - maxlen) - 1, -1) if x[s:e] in logp]
        if not c:
            raise ValueError(f"no piece of the vocabulary ends at byte {e} of {x!r}")
        cands.append(c if order == "shortest" else c[::-1])
    return cands


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    ez = math.exp(z)
    return ez / (1.0 + ez)


def _end_law(
    variant: str, cands: list[tuple[int, float]], value: Callable[[int], float], alpha: float
) -> dict[tuple[int, float], float]:
    """Law of ``(back[e], carried value at e)`` over the accept/reject decisions at one end."""
    # a branch: (chosen start, carried value, running log-sum) -> probability
    branches: dict[tuple[int, float, float], float] = {}
    for k, (s, l) in enumerate(cands):
        if variant == "v1":
            c = value(s) + l
        else:
            c = value(s) + alpha * l
        if k == 0:
            branches = {(s, c, c): 1.0}
            continue
        new: dict[tuple[int, float, float], float] = {}
        for (ch, val, run), prob in branches.items():
            if variant == "v1":
                p, run2 = _sigmoid(alpha * (c - val)), run
            else:
                run2 = logaddexp(run, c)
                p = math.exp(c - run2)
            acc = (s, c, run2)
            rej = (ch, val, run2)
            new[acc] = new.get(acc, 0.0) + prob * p
            new[rej] = new.get(rej, 0.0) + prob * (1.0 - p)
        branches = new
    out: dict[tuple[int, float], float] = {}
    for (ch, val, run), prob in branches.items():
        key = (ch, run if variant == "perfect" else val)
        out[key] = out.get(key, 0.0) + prob
    return out


def sampler_law(
    x: bytes, logp: Mapping[bytes, float], alpha: float, variant: str = "perfect", order: str = "shortest"
) -> dict[Segmentation, float]:
    """Exact output law of a sampler: every decision is branched on, identical states are merged.

    A state is the (carried value, sampled path) of the last ``max piece length`` positions, which is
    all the future decisions and the output depend on.
    """
    _check(x, logp, alpha)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    cands = _candidates(x, logp, order)
    maxlen = max(len(p) for p in logp)
    # state: tuple of (position, value, path) for the window of recent positions
    states: dict[tuple, float] = {((0, 0.0, ()),): 1.0}
    for e in range(1, len(x) + 1):
        new: dict[tuple, float] = {}
        for state, prob in states.items():
            by_pos = {p: (v, path) for p, v, path in state}
            law = _end_law(variant, cands[e], lambda s, by_pos=by_pos: by_pos[s][0], alpha)
            for (s, val), q in law.items():
                if q == 0.0:
                    continue
                path = by_pos[s][1] + (e,)
                kept = tuple(t for t in state if t[0] > e - maxlen)
                nxt = kept + ((e, val, path),)
                new[nxt] = new.get(nxt, 0.0) + prob * q
        states = new
    out: dict[Segmentation, float] = {}
    for state, prob in states.items():
        bounds = (0,) + state[-1][2]
        seg = tuple(x[a:b] for a, b in zip(bounds, bounds[1:]))
        out[seg] = out.get(seg, 0.0) + prob
    return out


def draw(
    x: bytes,
    logp: Mapping[bytes, float],
    alpha: float,
    uniform: Callable[[], float],
    variant: str = "perfect",
    order: str = "shortest",
) -> Segmentation:
    """One sample of a sampler, with uniforms in [0, 1) from ``uniform()`` (reference, slow)."""
    _check(x, logp, alpha)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    cands = _candidates(x, logp, order)
    n = len(x)
    value = [0.0] * (n + 1)
    back = [0] * (n + 1)
    for e in range(1, n + 1):
        run = val = -math.inf
        for k, (s, l) in enumerate(cands[e]):
            c = value[s] + (l if variant == "v1" else alpha * l)
            if k == 0:
                back[e], val, run = s, c, c
                continue
            if variant == "v1":
                p = _sigmoid(alpha * (c - val))
            else:
                run = logaddexp(run, c)
                p = math.exp(c - run)
            if uniform() < p:
                back[e], val = s, c
        value[e] = run if variant == "perfect" else val
    out = []
    e = n
    while e > 0:
        out.append(x[back[e] : e])
        e = back[e]
    return tuple(out[::-1])

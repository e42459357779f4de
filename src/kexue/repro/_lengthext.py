"""Shared length-extrapolation harness ("LX harness") for the rope-beta-base, rerope, hwfa, keynorm and
attention-scale reproductions.

Full mode (the specs' protocol). Data: bytes of this Python's standard-library ``.py`` sources
(sorted walk; test, tests, idlelib, site-packages, __pycache__, lib2to3, tkinter, turtledemo,
ensurepip skipped); a file is validation when ``int(md5(relative path)) % 10 == 0``. Training windows
are ``L + 1`` random bytes, a quarter of each batch replaced by "repeat" windows (the first half of a
window written twice).

Models: pre-RMSNorm byte LMs (:class:`kexue.nn.transformer.TransformerLM`) trained at length ``L``
with AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), linear warm-up then cosine decay, gradient
clipping 1.0. Evaluation at ``T = L, 2L, 4L, 8L`` on fixed validation windows: mean loss and next-byte
accuracy over all positions, and the same-target "tail" loss (the last ``L`` bytes of ``[e - T, e)``
for fixed end positions ``e``, so every ``T`` scores identical bytes with more context).

Quick mode trains 2-layer models at L = 32 for 300 steps on :func:`kexue.data.lagged_copy_tokens` (the
next token copies the one 3 or 7 back, chosen by the previous token's parity): a byte LM that small
barely uses context, so it cannot show extrapolation failures, while this relative-position rule does.

Trained models and evaluations are cached per ``(mode, seed, ...)`` in this process, so the five
reproductions share one run.
"""

from __future__ import annotations

import hashlib
import math
import sysconfig
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kexue.data import lagged_copy_tokens
from kexue.nn.attention import AttentionConfig, Extrapolation
from kexue.nn.rope import RopeScaling, leaky_rerope_factor
from kexue.nn.transformer import TransformerConfig, TransformerLM, hwfa_layers, hwfa_window
from kexue.repro.base import Table, track

__all__ = [
    "SETTINGS",
    "Metrics",
    "Settings",
    "evaluate",
    "extrapolation_figure",
    "extrapolation_table",
    "get_model",
    "model_config",
    "variant",
    "describe",
    "finish",
    "logits",
    "loss_at",
    "record",
]

_SKIP = {
    "test",
    "tests",
    "idlelib",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "ensurepip",
}


@dataclass(frozen=True)
class Settings:
    """Harness size for one mode."""

    train_length: int
    n_layers: int
    d_model: int
    n_heads: int
    batch: int
    steps: int
    warmup: int
    lr: float
    eval_windows: int
    hwfa2_window: int
    task: str = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256 if self.task == "bytes" else LAGCOPY_VOCAB

    @property
    def min_context(self) -> int:
        """Targets at window index < min_context are not scored (their source is outside the window)."""
        return 0 if self.task == "bytes" else max(LAGCOPY_LAGS)

    @property
    def eval_lengths(self) -> tuple[int, ...]:
        return tuple(self.train_length * m for m in (1, 2, 4, 8))


LAGCOPY_VOCAB = 32
LAGCOPY_LAGS = (3, 7)

SETTINGS: dict[str, Settings] = {
    # the spec's protocol (rope-beta-base spec, "LX harness"): byte LM on standard-library sources,
    # evaluated on 128 windows instead of 32 (32 x 64 bytes left +-0.05 nats of content noise between lengths)
    "full": Settings(64, 4, 64, 2, 16, 600, 100, 3e-3, 128, 32, "bytes"),
    # a smoke run of a few seconds per model on one core. A byte LM that small uses too little context
    # to show extrapolation failures, so quick mode uses kexue.data.lagged_copy_tokens: the next token
    # copies the one 3 or 7 back (chosen by the parity of the previous token), a relative-position rule.
    "quick": Settings(32, 2, 64, 2, 16, 300, 30, 1e-2, 32, 16, "lagcopy"),
}


# --- data -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, validation)`` byte tensors (uint8) of the standard-library sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & _SKIP)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"no standard-library sources under {root}")
    train, valid = bytearray(), bytearray()
    for p in files:
        rel = p.relative_to(root).as_posix()
        dest = valid if int(hashlib.md5(rel.encode()).hexdigest(), 16) % 10 == 0 else train
        dest.extend(p.read_bytes())
    return (
        torch.frombuffer(train, dtype=torch.uint8).clone(),
        torch.frombuffer(valid, dtype=torch.uint8).clone(),
    )


def _repeat_window(x: torch.Tensor) -> torch.Tensor:
    half = math.ceil(x.shape[-1] / 2)
    return torch.cat([x[..., :half], x[..., :half]], dim=-1)[..., : x.shape[-1]]


def train_batch(data: torch.Tensor | None, length: int, batch: int, g: torch.Generator) -> torch.Tensor:
    """``batch`` windows of ``length + 1`` bytes (int64); the last quarter are "repeat" windows.
    With ``data=None`` the windows are lagged-copy sequences instead."""
    if data is None:
        return lagged_copy_tokens(batch, length + 1, LAGCOPY_VOCAB, LAGCOPY_LAGS, seed=g)
    starts = torch.randint(0, data.shape[0] - length - 1, (batch,), generator=g)
    x = torch.stack([data[s : s + length + 1] for s in starts.tolist()]).long()
    n_rep = batch // 4
    if n_rep:
        x[batch - n_rep :] = _repeat_window(x[batch - n_rep :])
    return x


# --- models ---------------------------------------------------------------------------------


def model_config(name: str, s: Settings) -> TransformerConfig:
    """The named model of the harness (``rope``, ``rope-logn``, ``kna``, ``qna``, ``cosa``, ``nope``,
    ``kna-nope``, ``hwfa``, ``hwfa2``, ``invleaky``)."""
    L = s.train_length
    V = s.vocab_size
    base = TransformerConfig(V, s.d_model, s.n_layers, s.n_heads, 4, AttentionConfig(train_length=L))
    attn = {
        "rope": {},
        "rope-logn": {"scale": "logn"},
        "kna": {"qk_norm": "key"},
        "qna": {"qk_norm": "query"},
        "cosa": {"qk_norm": "both"},
        "nope": {"position": "none"},
        "kna-nope": {"qk_norm": "key", "position": "none"},
        "invleaky": {"rerope_window": L // 4, "leaky_factor": 1.0 / 16},
    }
    if name in attn:
        return base.with_attention(**attn[name])
    if name == "hwfa":
        return TransformerConfig(
            V,
            s.d_model,
            s.n_layers,
            s.n_heads,
            4,
            layers=hwfa_layers(s.n_layers, hwfa_window(s.n_layers, L), L),
        )
    if name == "hwfa2":
        return TransformerConfig(
            V,
            s.d_model,
            s.n_layers,
            s.n_heads,
            4,
            layers=hwfa_layers(s.n_layers, s.hwfa2_window, L, variant="hwfa2"),
        )
    raise ValueError(f"unknown harness model {name!r}")


_MODELS: dict[tuple[str, int, str], tuple[TransformerLM, list[float]]] = {}


def _lr(step: int, s: Settings) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    t = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * 0.5 * (1 + math.cos(math.pi * t))


def get_model(mode: str, seed: int, name: str) -> tuple[TransformerLM, list[float]]:
    """Train (once per process) the named model; returns it with its training-loss curve."""
    key = (mode, seed, name)
    if key in _MODELS:
        return _MODELS[key]
    s = SETTINGS[mode]
    cfg = model_config(name, s)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TransformerLM(cfg)
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.embed.weight]
    ids = {id(p) for p in decay}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
        lr=s.lr,
        betas=(0.9, 0.95),
    )
    train = corpus()[0] if s.task == "bytes" else None
    g = torch.Generator().manual_seed(seed * 1000 + 17)
    curve: list[float] = []
    model.train()
    with torch.enable_grad():  # callers may be inside no_grad (evaluation)
        for step in track(range(s.steps), f"train {name} ({mode})"):
            for group in opt.param_groups:
                group["lr"] = _lr(step, s)
            x = train_batch(train, s.train_length, s.batch, g)
            loss = model.loss(x[:, :-1], x[:, 1:])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            curve.append(float(loss.detach()))
    model.eval()
    _MODELS[key] = (model, curve)
    return model, curve


# --- inference variants ---------------------------------------------------------------------

VariantFn = Callable[[int, Settings], Extrapolation | None]


def variant(name: str) -> VariantFn:
    """Map an inference-variant name to ``(T, settings) -> Extrapolation`` (k = T / L)."""

    def scaled(kind: str, **kw: float) -> VariantFn:
        def make(t: int, s: Settings) -> Extrapolation:
            L = s.train_length
            return Extrapolation(
                scaling=RopeScaling(kind, max(1.0, t / L), original_length=L, **kw), train_length=L
            )

        return make

    def rerope(frac: int, leaky: bool = False, dagger: bool = False) -> VariantFn:
        def make(t: int, s: Settings) -> Extrapolation:
            L = s.train_length
            w = L // frac
            k = leaky_rerope_factor(t, w, L) if leaky else None
            return Extrapolation(rerope_window=w, leaky_factor=k, logn_dagger=dagger, train_length=L)

        return make

    table: dict[str, VariantFn] = {
        "direct": lambda t, s: None,
        "plain": lambda t, s: Extrapolation(train_length=s.train_length),
        "pi": scaled("linear"),
        "ntk-old": scaled("ntk-old"),
        "ntk": scaled("ntk"),
        "ntk-fixed": scaled("ntk-fixed"),
        "ntk-mixed": scaled("ntk-mixed"),
        "yarn": scaled("yarn"),
        "logn-dagger": lambda t, s: Extrapolation(logn_dagger=True, train_length=s.train_length),
        "rerope": rerope(4),
        "rerope-half": rerope(2),
        "leaky": rerope(4, leaky=True),
        "rerope-dagger": rerope(4, dagger=True),
    }
    if name not in table:
        raise ValueError(f"unknown inference variant {name!r}; choose one of {sorted(table)}")
    return table[name]


VARIANT_LABELS = {
    "direct": "direct",
    "plain": "plain RoPE",
    "pi": "PI",
    "ntk-old": "NTK-old (b k)",
    "ntk": "NTK bloc97",
    "ntk-fixed": "NTK-fixed",
    "ntk-mixed": "NTK-mixed b=0.625",
    "yarn": "YaRN",
    "logn-dagger": "log n dagger",
    "rerope": "ReRoPE w=L/4",
    "rerope-half": "ReRoPE w=L/2",
    "leaky": "Leaky ReRoPE w=L/4",
    "rerope-dagger": "ReRoPE w=L/4 + log n dagger",
}


# --- evaluation -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    loss: float
    acc: float
    tail_loss: float
    tail_acc: float


@lru_cache(maxsize=4)
def _eval_sequences(task: str, n_windows: int, max_len: int) -> torch.Tensor:
    """``(n_windows, max_len + 1)`` evaluation windows; shorter lengths use their suffixes, so the last
    tokens (the "tail") are the same bytes for every evaluation length."""
    if task != "bytes":
        return lagged_copy_tokens(n_windows, max_len + 1, LAGCOPY_VOCAB, LAGCOPY_LAGS, seed=123)
    _, valid = corpus()
    ends = np.random.default_rng(123).integers(max_len + 1, valid.shape[0], size=n_windows)
    return torch.stack([valid[int(e) - max_len - 1 : int(e)] for e in ends]).long()


_EVALS: dict[tuple[str, int, str, str], dict[int, Metrics]] = {}
_EVAL_CHUNK = 32


@torch.no_grad()
def evaluate(mode: str, seed: int, model_name: str, variant_name: str) -> dict[int, Metrics]:
    """Metrics of a trained model under an inference variant at every evaluation length."""
    key = (mode, seed, model_name, variant_name)
    if key in _EVALS:
        return _EVALS[key]
    s = SETTINGS[mode]
    model, _ = get_model(mode, seed, model_name)
    make = variant(variant_name)
    seqs = _eval_sequences(s.task, s.eval_windows, max(s.eval_lengths))
    out: dict[int, Metrics] = {}
    L, skip = s.train_length, max(0, s.min_context - 1)
    for t in s.eval_lengths:
        x = seqs[:, -(t + 1) :]
        nlls, hits = [], []
        for chunk in x.split(_EVAL_CHUNK):  # bounds the memory of explicit (ReRoPE) logits
            logits = model(chunk[:, :-1], extrapolation=make(t, s))
            nlls.append(F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none"))
            hits.append((logits.argmax(-1) == chunk[:, 1:]).double())
        nll, hit = torch.cat(nlls), torch.cat(hits)
        out[t] = Metrics(
            loss=float(nll[:, skip:].mean()),
            acc=float(hit[:, skip:].mean()),
            tail_loss=float(nll[:, max(skip, t - L) :].mean()),
            tail_acc=float(hit[:, max(skip, t - L) :].mean()),
        )
    _EVALS[key] = out
    return out


def loss_at(
    mode: str, seed: int, model_name: str, variant_name: str, multiple: int, tail: bool = False
) -> float:
    """Loss of ``(model, variant)`` at ``T = multiple * L``."""
    t = SETTINGS[mode].train_length * multiple
    m = evaluate(mode, seed, model_name, variant_name)[t]
    return m.tail_loss if tail else m.loss


# --- reporting ------------------------------------------------------------------------------

Row = tuple[str, str]  # (model, variant)


def _label(model_name: str, variant_name: str) -> str:
    return f"{model_name} / {VARIANT_LABELS.get(variant_name, variant_name)}"


def extrapolation_table(mode: str, seed: int, rows: Sequence[Row], caption: str = "") -> Table:
    """Loss (and accuracy) at L..8L for each ``(model, variant)``; tail loss in the last columns."""
    s = SETTINGS[mode]
    cols = ["model / inference"]
    cols += [f"loss@{t}" for t in s.eval_lengths] + [f"acc@{t}" for t in s.eval_lengths]
    cols += [f"tail@{t}" for t in s.eval_lengths]
    body = []
    for model_name, variant_name in rows:
        ev = evaluate(mode, seed, model_name, variant_name)
        body.append(
            [_label(model_name, variant_name)]
            + [round(ev[t].loss, 4) for t in s.eval_lengths]
            + [round(ev[t].acc, 4) for t in s.eval_lengths]
            + [round(ev[t].tail_loss, 4) for t in s.eval_lengths]
        )
    cap = caption or (
        f"LM on {'standard-library bytes' if s.task == 'bytes' else 'lagged-copy tokens'} trained at "
        f"L={s.train_length} ({s.n_layers} layers, d={s.d_model}, {s.steps} steps, seed {seed}); "
        "loss in nats/token over all positions, next-token accuracy, and same-target tail loss (last L tokens)."
    )
    return Table(cols, body, cap)


def extrapolation_figure(mode: str, seed: int, rows: Sequence[Row], title: str):  # -> matplotlib Figure
    """Two panels: loss over all positions and same-target tail loss, against the evaluation length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = SETTINGS[mode]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab10").colors
    for i, (model_name, variant_name) in enumerate(rows):
        ev = evaluate(mode, seed, model_name, variant_name)
        xs = list(s.eval_lengths)
        style = {"color": colors[i % 10], "ls": ("-", "--", ":")[(i // 10) % 3], "marker": "o"}
        for ax, attr in zip(axes, ("loss", "tail_loss")):
            ax.plot(xs, [getattr(ev[t], attr) for t in xs], label=_label(model_name, variant_name), **style)
    for ax, name in zip(axes, ("loss over all positions", "same-target tail loss (last L tokens)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(s.eval_lengths), [str(t) for t in s.eval_lengths])
        ax.axvline(s.train_length, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("evaluation length T")
        ax.set_ylabel("nats / token")
        ax.set_title(name)
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


@torch.no_grad()
def logits(mode: str, seed: int, model_name: str, ext: Extrapolation | None, length: int) -> torch.Tensor:
    """Logits of a trained model on the evaluation windows of length ``length``."""
    s = SETTINGS[mode]
    model, _ = get_model(mode, seed, model_name)
    x = _eval_sequences(s.task, s.eval_windows, max(s.eval_lengths))[:, -(length + 1) : -1]
    return model(x, extrapolation=ext)


def describe(mode: str) -> str:
    s = SETTINGS[mode]
    data = (
        "bytes of the standard-library sources (vocabulary 256, md5 file split)"
        if s.task == "bytes"
        else f"lagged-copy sequences (vocabulary {LAGCOPY_VOCAB}, lags {LAGCOPY_LAGS}, "
        "kexue.data.lagged_copy_tokens; the first max(lag)-1 targets of a window are not scored)"
    )
    return (
        f"{mode} mode: {s.n_layers}-layer d={s.d_model} {s.n_heads}-head pre-RMSNorm LMs trained at L={s.train_length} "
        f"for {s.steps} steps (batch {s.batch}, AdamW lr {s.lr:g}) on {data}; evaluated at T={list(s.eval_lengths)} "
        f"on {s.eval_windows} fixed windows."
    )


def record(result, mode: str, seed: int, rows: Sequence[Row]) -> None:  # result: kexue.repro.base.Result
    """Store ``loss``/``acc``/``tail`` of every row and length in ``result.metrics``."""
    for model_name, variant_name in rows:
        for t, m in evaluate(mode, seed, model_name, variant_name).items():
            key = f"{model_name}/{variant_name}@{t}"
            result.metrics[f"loss {key}"] = m.loss
            result.metrics[f"acc {key}"] = m.acc
            result.metrics[f"tail {key}"] = m.tail_loss


def finish(result, out: Path, mode: str, seed: int, rows: Sequence[Row], name: str, title: str) -> None:
    """Attach the comparison table and figure of ``rows`` to ``result``."""
    from kexue.repro.base import save_figure

    record(result, mode, seed, rows)
    result.tables.append(extrapolation_table(mode, seed, rows))
    save_figure(extrapolation_figure(mode, seed, rows, title), out, name, result)
    result.notes = (result.notes + " " + describe(mode)).strip()

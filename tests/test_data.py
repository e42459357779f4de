"""kexue.data: offline, seeded, validated."""

from __future__ import annotations

import pytest
import torch

from kexue import data


def test_digits_shapes_ranges_and_split():
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(y.tolist()) == set(range(10))
    tr, ytr = data.digits("train", seed=1)
    te, yte = data.digits("test", seed=1)
    assert len(tr) + len(te) == 1797 and len(te) == round(1797 * 0.2)
    assert torch.equal(data.digits("test", seed=1)[0], te)
    assert not torch.equal(data.digits("test", seed=2)[0], te)
    assert data.digits(flatten=True)[0].shape == (1797, 64)
    with pytest.raises(ValueError, match="split"):
        data.digits("valid")


def test_text_corpus_is_deterministic_and_bounded():
    a = data.stdlib_text(50_000, seed=0)
    assert a == data.stdlib_text(50_000, seed=0) and a != data.stdlib_text(50_000, seed=1)
    assert 40_000 < len(a.encode()) <= 50_000 + 64  # documents are joined by newlines
    docs = list(data.stdlib_documents(max_bytes=20_000, seed=0))
    assert sum(len(d.encode()) for d in docs) <= 20_000 and all(d.strip() for d in docs)
    toks = data.byte_tokens(10_000)
    assert toks.dtype == torch.int64 and 0 <= toks.min() and toks.max() < 256
    with pytest.raises(ValueError, match="max_bytes"):
        data.stdlib_text(0)


@pytest.mark.parametrize("name", sorted(data.TOY_2D))
def test_toy_distributions_seeded(name):
    a = data.toy_2d(name, 500, seed=3)
    assert a.shape == (500, 2) and torch.isfinite(a).all()
    assert torch.equal(a, data.toy_2d(name, 500, seed=3))
    assert not torch.equal(a, data.toy_2d(name, 500, seed=4))


def test_eight_gaussians_cover_the_eight_centres():
    pts = data.eight_gaussians(4000, seed=0)
    nearest = torch.cdist(pts, data.eight_gaussian_centres()).argmin(1)
    counts = torch.bincount(nearest, minlength=8)
    assert (counts > 350).all()
    assert torch.cdist(pts, data.eight_gaussian_centres()).min(1).values.max() < 0.3


def test_zipf_frequencies_decrease_with_rank():
    t = data.zipf_tokens(50_000, 100, exponent=1.2, seed=0)
    c = torch.bincount(t, minlength=100).double()
    assert c[0] > c[1] > c[4] > c[20] and c[0] / c[9] == pytest.approx(10**1.2, rel=0.15)


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown toy"):
        data.toy_2d("moons", 10)
    with pytest.raises(TypeError, match="n must be an int"):
        data.eight_gaussians(2.5)
    with pytest.raises(ValueError, match="n must be >= 1"):
        data.rings(0)
    with pytest.raises(TypeError, match="seed"):
        data.swiss_roll(10, seed="x")
    with pytest.raises(ValueError, match="exponent"):
        data.zipf_tokens(10, 10, exponent=0)

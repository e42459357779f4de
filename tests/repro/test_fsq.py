"""Quick-mode reproduction of the FSQ post (kexue.fm/archives/9826)."""

import pytest
import torch

from kexue.repro import fsq
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return fsq.run("quick", 0, tmp_path_factory.mktemp("fsq"))


def test_claim_matches_catalogue():
    post = BY_SLUG[fsq.CLAIM.slug]
    assert (fsq.CLAIM.url, fsq.CLAIM.date, fsq.CLAIM.title) == (post.url, post.date, post.title)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert len(result.figures) == 2 and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["fsq_utilisation_main"] > 0.88
    assert m["vq_utilisation_main"] < 0.05
    assert m["fsq_perplexity_main"] > 500
    assert m["fsq_mse_main"] < 0.3 < 0.45 < m["vq_mse_main"]
    assert m["fsq_codebook_parameters"] == 0
    assert m["n_heldout_tokens"] == 10_000


def test_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        fsq.run("medium", 0, None)


def test_harness_is_deterministic_by_seed():
    from kexue.repro import _vqvae

    a = _vqvae._train("simvq", 256, 25, 3, hidden=16, n_test=500)
    b = _vqvae._train("simvq", 256, 25, 3, hidden=16, n_test=500)
    c = _vqvae._train("simvq", 256, 25, 4, hidden=16, n_test=500)
    assert a.mse == b.mse and (a.counts == b.counts).all() and a.curve_mse == b.curve_mse
    assert a.mse != c.mse


def test_blobs_data_is_seeded_and_bounded():
    from kexue.data import blobs

    a, b, c = blobs(64, seed=1), blobs(64, seed=1), blobs(64, seed=2)
    assert a.shape == (64, 1, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.amax(dim=(1, 2, 3)).min()) > 0.1 and float(a.max()) <= 2.0
    assert blobs(5, seed=0, flatten=True).shape == (5, 64)
    with pytest.raises(ValueError, match=">= 1"):
        blobs(0)

"""Quick-mode reproduction of the BytePiece post (kexue.fm/archives/9752)."""

from __future__ import annotations

import pytest

from kexue.repro import bytepiece
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return bytepiece.run("quick", 0, tmp_path_factory.mktemp("bytepiece"))


def test_claim_matches_catalogue():
    post = BY_SLUG[bytepiece.CLAIM.slug]
    assert (bytepiece.CLAIM.url, bytepiece.CLAIM.date, bytepiece.CLAIM.title) == (
        post.url,
        post.date,
        post.title,
    )


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert result.figures and all(p.is_file() for p in result.figures)
    names = " ".join(c.name for c in result.checks)
    assert "lossless" in names and "pure-Python reference" in names and "rare character" in names


def test_key_numbers(result):
    m = result.metrics
    assert m["stdlib_encode_MBps"] >= 1.0
    assert 1.8 < m["stdlib_bytes_per_token"] < 3.0
    if "peoples_bytes_per_token" in m:
        assert 3.5 < m["peoples_bytes_per_token"] < 4.5
        if "peoples_SP_Unigram_default_bytes_per_token" in m:
            assert m["peoples_bytes_per_token"] >= 0.97 * m["peoples_SP_Unigram_default_bytes_per_token"]


def test_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        bytepiece.run("medium", 0, tmp_path)

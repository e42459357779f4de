"""Quick-mode reproduction of the tied-embedding post (kexue.fm/archives/9698)."""

from __future__ import annotations

import math

import pytest

from kexue.repro import shared_embedding
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return shared_embedding.run("quick", 0, tmp_path_factory.mktemp("se"))


def test_claim_matches_catalogue():
    post = BY_SLUG[shared_embedding.CLAIM.slug]
    assert (shared_embedding.CLAIM.url, shared_embedding.CLAIM.date) == (post.url, post.date)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert result.figures and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["mc_tied_d256_n2000"] == pytest.approx(16.0, abs=0.15)
    assert m["mc_tied_d128_n5000"] == pytest.approx(11.37, abs=0.15)
    assert m["mc_tied_logn_init_d256_n2000"] == pytest.approx(math.log(3999), abs=0.15)
    assert m["lm_step0_tied"] > math.log(256) + 2
    assert m["lm_step0_tied"] == pytest.approx(m["lm_step0_tied_predicted"], abs=0.3)
    for name in ("untied", "tied, sigma=log(n)/d", "tied + half swap", "tied + orthogonal proj"):
        assert m[f"lm_step0_{name}"] < math.log(256) + 0.7
    assert 0.1 < m["repeat_fraction"] < 0.35


def test_bad_mode_raises(tmp_path):
    with pytest.raises(ValueError, match="mode must be one of"):
        shared_embedding.run("medium", 0, tmp_path)

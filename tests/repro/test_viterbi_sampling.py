"""Quick-mode reproduction of the random-segmentation posts (kexue.fm/archives/9768, 9811)."""

from __future__ import annotations

import pytest

from kexue.repro import viterbi_sampling
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return viterbi_sampling.run("quick", 0, tmp_path_factory.mktemp("viterbi_sampling"))


def test_claim_matches_catalogue():
    post = BY_SLUG[viterbi_sampling.CLAIM.slug]
    c = viterbi_sampling.CLAIM
    assert (c.url, c.date, c.title) == (post.url, post.date, post.title)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert result.figures and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["tv_abc_perfect"] < 1e-12 and m["tv_aaaa_perfect"] < 1e-12
    assert m["tv_abc_v1"] == pytest.approx(0.058, abs=5e-4)
    assert m["tv_aaaa_v1"] == pytest.approx(0.090, abs=5e-4)
    assert m["tv_aaaa_intermediate"] == pytest.approx(0.229, abs=5e-4)
    assert m["mc_min_pvalue"] > 1e-4 and m["mc_max_tv"] < 0.03
    assert m["v1_min_pvalue"] < 1e-6
    assert (
        m["bytes_per_token_alpha_0.05"] < m["bytes_per_token_alpha_1.0"] <= m["bytes_per_token_deterministic"]
    )

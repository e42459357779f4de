"""Quick-mode reproduction of the Pre/Post Norm post (kexue.fm/archives/9009)."""

from __future__ import annotations

import pytest

from kexue.repro import pre_post_norm
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return pre_post_norm.run("quick", 0, tmp_path_factory.mktemp("ppn"))


def test_claim_matches_catalogue():
    post = BY_SLUG[pre_post_norm.CLAIM.slug]
    assert (pre_post_norm.CLAIM.url, pre_post_norm.CLAIM.date) == (post.url, post.date)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert result.figures and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["init_slope_pre"] < -0.45 and abs(m["init_slope_post"]) < 0.25
    assert m["init_rms_ratio_pre"] > 1.8 and m["init_rms_ratio_post"] == pytest.approx(1.0, abs=1e-3)
    assert m["init_gap_ratio_pre"] < 0.6 < m["init_gap_ratio_post"]


def test_init_diagnostics_are_deterministic_for_a_seed():
    a = pre_post_norm.init_diagnostics(5, seeds=1)
    b = pre_post_norm.init_diagnostics(5, seeds=1)
    assert a == b
    assert a != pre_post_norm.init_diagnostics(6, seeds=1)

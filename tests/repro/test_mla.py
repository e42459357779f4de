"""Quick-mode reproduction of the MLA post (kexue.fm/archives/10091)."""

from __future__ import annotations

import pytest

from kexue.repro import mla
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return mla.run("quick", 0, tmp_path_factory.mktemp("mla"))


def test_claim_matches_catalogue():
    post = BY_SLUG[mla.CLAIM.slug]
    assert (mla.CLAIM.url, mla.CLAIM.date, mla.CLAIM.title) == (post.url, post.date, post.title)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert result.figures and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["absorb_vs_naive_prefill_f64"] < 1e-10 and m["absorb_vs_naive_decode_f64"] < 1e-10
    assert m["absorb_vs_naive_prefill_f32"] < 1e-5
    assert 1e-4 < m["absorb_vs_naive_prefill_bf16"] < 0.1  # bf16 visibly loses precision
    assert m["coupled_rope_gap"] > 1e-3
    assert (m["deepseek_v2_mha_elements"], m["deepseek_v2_gqa_elements"]) == (32768, 2048)
    assert (m["deepseek_v2_mqa_elements"], m["deepseek_v2_mla_elements"]) == (256, 576)
    assert m["mla_60_layers_bytes_bf16"] == 69120
    assert round(m["mha_over_mla"], 1) == 56.9
    assert m["cache_after_100_mla_absorb"] == 2 * 100 * (24 + 8)
    assert m["latent_over_absorb_time"] > 2

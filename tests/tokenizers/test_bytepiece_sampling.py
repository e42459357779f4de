"""Random segmentation: the perfect sampler draws exactly from P_alpha; the earlier versions do not."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from kexue.tokenizers import Tokenizer
from kexue.tokenizers import reference as ref
from kexue.tokenizers.sampling import (
    ORDERS,
    _end_law,
    count_segmentations,
    draw,
    log_partition,
    sampler_law,
    segmentations,
    target_law,
    total_variation,
)

ABC = {p: math.log(1 / 6) for p in (b"a", b"b", b"c", b"ab", b"bc", b"abc")}
AAAA = {b"a": math.log(0.4), b"aa": math.log(0.3), b"aaa": math.log(0.2), b"aaaa": math.log(0.1)}


def test_closed_form_of_the_worked_example():
    law = target_law(b"abc", ABC, 1.0)
    assert law[(b"a", b"b", b"c")] == pytest.approx(1 / 49, abs=1e-15)
    assert law[(b"a", b"bc")] == pytest.approx(6 / 49, abs=1e-15)
    assert law[(b"ab", b"c")] == pytest.approx(6 / 49, abs=1e-15)
    assert law[(b"abc",)] == pytest.approx(36 / 49, abs=1e-15)
    assert all(v == pytest.approx(0.25) for v in target_law(b"abc", ABC, 0.0).values())


@pytest.mark.parametrize("order", ORDERS)
def test_perfect_sampler_law_is_exact_and_earlier_versions_are_biased(order):
    for x, vocab in ((b"abc", ABC), (b"aaaa", AAAA)):
        for alpha in (0.0, 0.1, 0.5, 1.0, 3.0):
            assert (
                total_variation(sampler_law(x, vocab, alpha, "perfect", order), target_law(x, vocab, alpha))
                < 1e-12
            )
    # the numbers of post 9811, edges in longest-first order as in BytePiece's Aho-Corasick stream
    tv = {
        (x, v): total_variation(sampler_law(x, vocab, 1.0, v, "longest"), target_law(x, vocab, 1.0))
        for x, vocab in ((b"abc", ABC), (b"aaaa", AAAA))
        for v in ("v1", "intermediate")
    }
    assert tv[(b"abc", "v1")] == pytest.approx(0.058, abs=5e-4)
    assert tv[(b"aaaa", "v1")] == pytest.approx(0.090, abs=5e-4)
    assert tv[(b"abc", "intermediate")] == pytest.approx(0.032, abs=5e-4)
    assert tv[(b"aaaa", "intermediate")] == pytest.approx(0.229, abs=5e-4)


def test_v1_local_choice_is_order_dependent():
    # three candidates with equal score at one end: v1 keeps them with 1/4, 1/4, 1/2; perfect 1/3 each
    cands = [(0, 0.0), (1, 0.0), (2, 0.0)]
    v1 = _end_law("v1", cands, lambda s: 0.0, 1.0)
    assert sorted(v1.values()) == pytest.approx([0.25, 0.25, 0.5])
    perfect = _end_law("perfect", cands, lambda s: 0.0, 1.0)
    assert sorted(perfect.values()) == pytest.approx([1 / 3] * 3)
    assert all(z == pytest.approx(math.log(3.0)) for _, z in perfect)


toy = st.lists(st.text(alphabet="ab", min_size=2, max_size=3), max_size=4, unique=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    extra=toy,
    x=st.text(alphabet="ab", min_size=1, max_size=7),
    logits=st.lists(st.floats(-4, 0), min_size=6, max_size=6),
    alpha=st.floats(0, 3),
    order=st.sampled_from(ORDERS),
)
def test_perfect_sampler_law_on_random_toy_vocabularies(extra, x, logits, alpha, order):
    pieces = ["a", "b", *extra]
    vocab = {p.encode(): logits[i] for i, p in enumerate(pieces)}
    xb = x.encode()
    target = target_law(xb, vocab, alpha)
    assert total_variation(sampler_law(xb, vocab, alpha, "perfect", order), target) < 1e-12
    assert len(target) == count_segmentations(xb, vocab) == len(segmentations(xb, vocab))


def small_tokenizer(seed: int = 0) -> tuple[Tokenizer, dict[bytes, float]]:
    rng = np.random.default_rng(seed)
    counts = {bytes([b]): int(c) for b, c in enumerate(rng.integers(1, 50, 256))}
    counts |= {b"ab": 40, b"bc": 30, b"abc": 20, b"ca": 15, b"cab": 9, b"aa": 25}
    tok = Tokenizer(counts)
    return tok, dict(zip(tok.pieces, tok.log_probs.tolist()))


def test_compiled_sampler_passes_chi_square_against_the_exact_law():
    tok, lp = small_tokenizer()
    for x, alpha in ((b"abcab", 0.5), (b"aabca", 1.0)):
        target = target_law(x, lp, alpha)
        segs = list(target)
        draws = tok.encode_batch([x] * 20_000, alpha=alpha, seed=0)
        freq = Counter(tuple(tok.id_to_piece(i) for i in ids) for ids in draws)
        assert set(freq) <= set(segs)
        observed = np.array([freq[s] for s in segs], dtype=float)
        expected = np.array([target[s] for s in segs]) * len(draws)
        assert chisquare(observed, expected).pvalue > 1e-4
        assert total_variation({s: freq[s] / len(draws) for s in segs}, target) < 0.03


def test_log_partition_equals_enumeration():
    tok, lp = small_tokenizer(1)
    for x in (b"abcab", b"aaaa", b"cabca"):
        for alpha in (0.0, 0.3, 1.0):
            assert tok.log_partition(x, alpha) == pytest.approx(log_partition(x, lp, alpha), rel=1e-12)
    # with alpha = 0 the partition function counts the segmentations
    assert math.exp(tok.log_partition(b"abcab", 0.0)) == pytest.approx(count_segmentations(b"abcab", lp))


def test_large_alpha_is_viterbi_and_zero_alpha_is_uniform():
    tok, lp = small_tokenizer(2)
    x = b"abcabca"
    assert all(tok.tokenize(x, alpha=1e3, seed=s) == tok.tokenize(x) for s in range(20))
    draws = tok.encode_batch([x] * 6000, alpha=0.0, seed=1)
    n = count_segmentations(x, lp)
    freq = Counter(map(tuple, draws))
    assert len(freq) == n
    assert chisquare(list(freq.values()), [len(draws) / n] * n).pvalue > 1e-4


def test_reference_draw_uses_the_same_rule_as_the_law():
    # Monte Carlo of the pure-Python v1 sampler converges to its exact (biased) law, not to P_alpha
    rng = ref.Rng(5, 0)
    n = 4000
    freq = Counter(draw(b"aaaa", AAAA, 1.0, rng.uniform, "v1", "longest") for _ in range(n))
    law = sampler_law(b"aaaa", AAAA, 1.0, "v1", "longest")
    assert total_variation({k: v / n for k, v in freq.items()}, law) < 0.03
    assert total_variation({k: v / n for k, v in freq.items()}, target_law(b"aaaa", AAAA, 1.0)) > 0.05


def test_bad_sampler_arguments():
    with pytest.raises(ValueError, match="alpha"):
        target_law(b"abc", ABC, float("nan"))
    with pytest.raises(ValueError, match="alpha"):
        sampler_law(b"abc", ABC, -1.0)
    with pytest.raises(TypeError, match="bytes"):
        sampler_law("abc", ABC, 1.0)
    with pytest.raises(ValueError, match="variant"):
        sampler_law(b"abc", ABC, 1.0, "v2")
    with pytest.raises(ValueError, match="no piece"):
        sampler_law(b"abd", ABC, 1.0)

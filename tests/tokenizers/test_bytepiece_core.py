"""The compiled BytePiece core against the pure-Python reference and against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexue.tokenizers import reference as ref
from kexue.tokenizers.ngrams import NgramCounts, build_lm, expand_windows
from kexue.tokenizers.sampling import segmentations

core = pytest.importorskip("kexue.tokenizers._core", reason="compiled core not built")

ALL_BYTES = [bytes([i]) for i in range(256)]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vocab_strategy(alphabet: bytes = b"ab\n\xe4\xb8\x80", max_len: int = 5):
    piece = st.binary(min_size=2, max_size=max_len).map(
        lambda b: bytes(alphabet[x % len(alphabet)] for x in b)
    )
    return st.lists(st.tuples(piece, st.integers(1, 6)), max_size=12, unique_by=lambda t: t[0])


def make_vocab(extra: list[tuple[bytes, int]], seed: int = 0) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = {p: int(c) for p, c in zip(ALL_BYTES, rng.integers(1, 4, 256))}
    for p, c in extra:
        counts[p] = c
    pieces = sorted(counts, key=lambda p: (len(p), p))
    cnt = np.array([counts[p] for p in pieces], dtype=np.float64)
    logp = np.ascontiguousarray(np.log(cnt) - np.log(cnt.sum()))
    return pieces, logp


texts = st.binary(max_size=40).map(lambda b: bytes(b"ab\n\xe4\xb8\x80\x00\xff"[x % 8] for x in b))


@FAST
@given(keys=st.sets(st.binary(min_size=1, max_size=6), max_size=40), probes=st.lists(st.binary(max_size=6)))
def test_double_array_finds_exactly_its_keys(keys, probes):
    keys = sorted(keys)
    buf = b"".join(keys)
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keys])]).astype(np.int64)
    trie = core.DoubleArray().build(buf, offsets, np.arange(len(keys), dtype=np.int32))
    for i, k in enumerate(keys):
        assert trie.lookup(k) == i
    for p in probes:
        assert trie.lookup(p) == (keys.index(p) if p in keys else -1)


def test_double_array_rejects_unsorted_input():
    with pytest.raises(ValueError, match="sorted"):
        core.DoubleArray().build(b"ba", np.array([0, 1, 2], np.int64), np.arange(2, dtype=np.int32))


def test_rng_streams_match_reference():
    for seed, stream in [(0, 0), (1, 0), (0, 1), (2**64 - 1, 12345)]:
        assert core.uniforms(seed, stream, 50) == ref.uniforms(seed, stream, 50)
    u = np.array(core.uniforms(7, 0, 20000))
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01


@FAST
@given(extra=vocab_strategy(), data=texts, seed=st.integers(0, 2**64 - 1), alpha=st.floats(0, 3))
def test_unigram_core_matches_reference(extra, data, seed, alpha):
    pieces, logp = make_vocab(extra)
    c, r = core.UnigramCore(pieces, logp), ref.UnigramCore(pieces, logp)
    for chunked in (True, False):
        assert c.encode(data, chunked) == r.encode(data, chunked)
        assert c.encode(data, chunked, True, alpha, seed, 3) == r.encode(data, chunked, True, alpha, seed, 3)
        assert c.tokenize(data, chunked, True, alpha, seed) == r.tokenize(data, chunked, True, alpha, seed)
    assert b"".join(c.tokenize(data, True, True, alpha, seed)) == data
    assert c.encode_many([data, data[:5]], True, True, alpha, seed, 4) == [
        r.encode(data, True, True, alpha, seed, 4),
        r.encode(data[:5], True, True, alpha, seed, 5),
    ]
    assert math.isclose(
        c.log_partition(data, alpha), r.log_partition(data, alpha), rel_tol=1e-12, abs_tol=1e-12
    )
    out_c, out_r = np.zeros(len(pieces), np.int64), np.zeros(len(pieces), np.int64)
    words = [data, data[::-1], b"ab" * 3]
    c.split_counts(words, np.array([1, 2, 3], np.int64), out_c)
    r.split_counts(words, np.array([1, 2, 3], np.int64), out_r)
    assert (out_c == out_r).all()


@FAST
@given(extra=vocab_strategy(alphabet=b"ab", max_len=4), data=st.binary(min_size=1, max_size=9))
def test_viterbi_equals_brute_force_argmax(extra, data):
    data = bytes(b"ab"[x % 2] for x in data)
    pieces, logp = make_vocab(extra)
    lp = dict(zip(pieces, logp.tolist()))
    ids = core.UnigramCore(pieces, logp).encode(data, False)
    best = max(math.fsum(lp[p] for p in s) for s in segmentations(data, lp))
    got = math.fsum(lp[pieces[i]] for i in ids)
    assert math.isclose(got, best, rel_tol=1e-12, abs_tol=1e-12)
    assert b"".join(pieces[i] for i in ids) == data


def test_viterbi_ties_prefer_the_longest_last_piece():
    # ab|c and a|bc and abc all score the same: BytePiece keeps the first (longest) candidate at each end
    counts = {p: 1 for p in ALL_BYTES}
    pieces = sorted(counts, key=lambda p: (len(p), p)) + [b"ab", b"bc"]
    logp = np.full(len(pieces), -2.0)
    logp[pieces.index(b"a")] = logp[pieces.index(b"b")] = logp[pieces.index(b"c")] = -1.0
    c = core.UnigramCore(pieces, np.ascontiguousarray(logp))
    assert c.tokenize(b"abc", False) == [b"a", b"bc"]
    assert ref.UnigramCore(pieces, logp).tokenize(b"abc", False) == [b"a", b"bc"]


def test_unigram_core_needs_every_byte():
    pieces = ALL_BYTES[:-1] + [b"ab"]
    with pytest.raises(ValueError, match="every single byte"):
        core.UnigramCore(pieces, np.zeros(len(pieces)))
    with pytest.raises(ValueError, match="every single byte"):
        ref.UnigramCore(pieces, np.zeros(len(pieces)))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), seed=st.integers(0, 2**64 - 1))
def test_fuzz_arbitrary_bytes_are_lossless(data, seed):
    pieces, logp = make_vocab([(b"\x00\x00", 5), (b"\xff\xfe", 3), (b"\n\n", 2), (b"a\n", 4)])
    c = core.UnigramCore(pieces, logp)
    for sample in (False, True):
        got = c.tokenize(data, True, sample, 0.3, seed)
        assert b"".join(got) == data
        assert all(p in set(pieces) for p in got)


def chunks_strategy():
    chunk = st.binary(min_size=1, max_size=25).map(lambda b: bytes(b"abc\xe4\xb8\x80\x00"[x % 7] for x in b))
    return st.lists(chunk, min_size=1, max_size=6)


@FAST
@given(chunks=chunks_strategy(), order=st.integers(1, 7))
def test_window_counts_expand_to_direct_ngram_counts(chunks, order):
    tables = []
    for mod in (core, ref):
        t = mod.NgramTable()
        t.add_chunks(chunks, order)
        tables.append(NgramCounts.from_table(t))
    assert (tables[0].keys == tables[1].keys).all() and (tables[0].counts == tables[1].counts).all()
    full_c, full_r = expand_windows(tables[0], core), expand_windows(tables[0], ref)
    assert (full_c.keys == full_r.keys).all() and (full_c.counts == full_r.counts).all()
    direct = ref.count_all_ngrams(chunks, order)
    assert {ref.unpack_gram(int(k)): int(v) for k, v in zip(full_c.keys, full_c.counts)} == direct


@FAST
@given(chunks=chunks_strategy(), order=st.integers(1, 7), min_count=st.integers(1, 3), eu=st.booleans())
def test_bnlm_segmentation_matches_reference(chunks, order, min_count, eu):
    t = core.NgramTable()
    t.add_chunks(chunks, order)
    lm = build_lm(expand_windows(NgramCounts.from_table(t), core), order, min_count)
    c = core.BNLMCore(lm.keys, lm.L, order, eu)
    r = ref.BNLMCore(lm.keys, lm.L, order, eu)
    for ch in chunks + [b"\x80abc", b"\xe4\xb8"]:
        seg = c.segment(ch)
        assert seg == r.segment(ch)
        assert b"".join(seg) == ch
    assert c.count_pieces(chunks) == r.count_pieces(chunks)


def test_bnlm_keeps_segmenting_after_a_rare_character():
    # bytepiece 0.6.3 collapses the rest of a chunk into single bytes after a character whose n-grams were
    # pruned (ensure_unicode trap); here the rare character becomes one piece and the rest is unaffected.
    common = "的确是这样的确是这样".encode()
    rare = "龘".encode()
    chunks = [common] * 5 + [rare + common]
    t = core.NgramTable()
    t.add_chunks(chunks, 6)
    lm = build_lm(expand_windows(NgramCounts.from_table(t), core), 6, 2)
    seg = core.BNLMCore(lm.keys, lm.L, 6, True).segment(rare + common)
    assert seg[0] == rare
    assert seg[1:] == core.BNLMCore(lm.keys, lm.L, 6, True).segment(common)
    assert all(len(p) >= 3 for p in seg)  # whole characters, never stray bytes
    assert seg == ref.BNLMCore(lm.keys, lm.L, 6, True).segment(rare + common)


def test_bad_core_arguments():
    with pytest.raises(ValueError, match="order"):
        core.NgramTable().add_chunks([b"abc"], 8)
    with pytest.raises(TypeError, match="chunk 0 must be bytes"):
        core.NgramTable().add_chunks(["abc"], 3)
    with pytest.raises(ValueError, match="sorted"):
        core.expand_windows(
            np.array([5, 3], np.uint64),
            np.array([1, 1], np.int64),
            np.zeros(20, np.uint64),
            np.zeros(20, np.int64),
        )
    keys = (np.arange(255, dtype=np.uint64) << np.uint64(56)) | np.uint64(1)
    with pytest.raises(ValueError, match="every single byte"):
        core.BNLMCore(keys, np.zeros(255), 3, True)


# --- the training fast path: chunking, partitioned window counts, radix sort, pruned expansion, piece tables

text_chars = st.text(alphabet=st.sampled_from(list("ab \n\r中é\x00\U0001f600\u0660")), max_size=60)


@FAST
@given(text=text_chars, max_chars=st.integers(1, 6), max_newlines=st.integers(1, 3))
def test_training_chunks_match_the_regex(text, max_chars, max_newlines):
    import re

    pattern = re.compile(rf".{{0,{max_chars}}}\n{{1,{max_newlines}}}|.{{1,{max_chars}}}")
    data = text.encode()
    spans = core.split_training_chunks(data, max_chars, max_newlines)
    assert spans == ref.split_training_chunks(data, max_chars, max_newlines)
    assert [data[a:b] for a, b in spans] == [t.encode() for t in pattern.findall(text)]


def export_sorted(table) -> tuple[np.ndarray, np.ndarray]:
    keys, counts = np.empty(len(table), np.uint64), np.empty(len(table), np.int64)
    table.export_sorted(keys, counts)
    return keys, counts


@FAST
@given(
    items=st.lists(text_chars, max_size=5),
    order=st.integers(1, 7),
    parts=st.integers(1, 3),
    max_chars=st.integers(1, 8),
)
def test_text_window_counts_equal_chunk_counts_and_partition_exactly(items, order, parts, max_chars):
    datas = [t.encode() for t in items]
    chunks = [d[a:b] for d in datas for a, b in ref.split_training_chunks(d, max_chars, 2)]
    whole = core.NgramTable()
    whole.add_chunks(chunks, order)
    expected = export_sorted(whole)
    tables = [core.NgramTable(4) for _ in range(parts)]
    for k, t in enumerate(tables):
        t.add_texts(datas, order, max_chars, 2, part=k, parts=parts)
        r = ref.NgramTable()
        r.add_texts(datas, order, max_chars, 2, part=k, parts=parts)
        assert np.array_equal(export_sorted(t)[0], export_sorted(r)[0])
        assert np.array_equal(export_sorted(t)[1], export_sorted(r)[1])
        keys = export_sorted(t)[0]
        assert all(core.window_part(int(key), parts) == k == ref.window_part(int(key), parts) for key in keys)
    n = sum(len(t) for t in tables)
    keys, counts = np.empty(n, np.uint64), np.empty(n, np.int64)
    pos = 0
    for t in tables:
        t.export(keys[pos : pos + len(t)], counts[pos : pos + len(t)])
        pos += len(t)
    core.sort_pairs(keys, counts)
    assert np.array_equal(keys, expected[0]) and np.array_equal(counts, expected[1])
    merged = core.NgramTable()
    for t in tables:
        merged.merge(t)
    assert np.array_equal(export_sorted(merged)[0], expected[0])


def test_window_table_grows_and_radix_sorts_like_numpy():
    rng = np.random.default_rng(0)
    # 200k whole windows of 7 bytes (the main table) and 20k windows of 3 bytes (the side table)
    long_keys = rng.integers(0, 2**63, 200_000, dtype=np.int64).astype(np.uint64) << np.uint64(8)
    short_keys = rng.integers(0, 2**24, 20_000, dtype=np.int64).astype(np.uint64) << np.uint64(40)
    keys = np.unique(np.concatenate([long_keys | np.uint64(7), short_keys | np.uint64(3)]))
    counts = rng.integers(1, 9, len(keys)).astype(np.int64)
    counts[::97] = rng.integers(200, 5000, len(counts[::97]))  # past the 8-bit count field of order 7
    t = core.NgramTable(16)
    t.add_counts(keys, counts)
    t.add_counts(keys[:1000], counts[:1000])
    assert t.order == 7 and len(t) == len(keys) and t.nbytes >= 8 * len(keys) / 0.7
    k, c = export_sorted(t)
    expected = counts.copy()
    expected[:1000] *= 2
    assert np.array_equal(k, keys) and np.array_equal(c, expected)
    perm = rng.permutation(len(keys))
    k2, c2 = keys[perm].copy(), expected[perm].copy()
    core.sort_pairs(k2, c2)
    assert np.array_equal(k2, keys) and np.array_equal(c2, expected)
    t.clear()
    assert len(t) == 0
    with pytest.raises(ValueError, match="same length"):
        core.sort_pairs(k2, c2[:-1])
    with pytest.raises(ValueError, match="itself"):
        t.merge(t)
    with pytest.raises(ValueError, match="part"):
        t.add_texts([b"ab"], 3, part=2, parts=2)
    for mod in (core, ref):
        with pytest.raises(ValueError, match="not a window"):
            mod.NgramTable().add_counts(np.array([0, 5], np.uint64), np.array([1, 1], np.int64))
        with pytest.raises(ValueError, match="not a packed window"):  # a 1-byte key with a second byte
            mod.NgramTable().add_counts(
                np.array([(1 << 56) | (1 << 48) | 1], np.uint64), np.ones(1, np.int64)
            )
        with pytest.raises(ValueError, match="not a packed window"):
            mod.NgramTable().add_counts(np.array([(1 << 56) | 9], np.uint64), np.ones(1, np.int64))
        with pytest.raises(ValueError, match=">= 1"):
            mod.NgramTable().add_counts(np.array([(1 << 56) | 1], np.uint64), np.zeros(1, np.int64))
        with pytest.raises(ValueError, match="order"):
            mod.NgramTable(order=8)


def test_window_counts_past_the_count_field_are_exact():
    # order 7 keeps 8 bits of count in a main word: runs of one byte saturate it many times over, in
    # add_chunks, add_counts (counts far past the field) and merge, with and without a fixed order
    chunks = [b"a" * 3000, b"ab" * 700 + b"\x00" * 600, b"\x00" * 300]
    for order in (7, 6, 1):
        r = ref.NgramTable()
        r.add_chunks(chunks, order)
        want = export_sorted(r)
        a, b = core.NgramTable(order=order), core.NgramTable()
        a.add_chunks(chunks[:1], order)
        b.add_chunks(chunks[1:], order)
        a.merge(b)
        assert len(a) == len(r) and all(np.array_equal(x, y) for x, y in zip(export_sorted(a), want))
        big = core.NgramTable()
        big.add_counts(want[0], want[1] * 1000)
        big.add_counts(want[0][::-1].copy(), want[1][::-1].copy())
        assert np.array_equal(export_sorted(big)[1], want[1] * 1001)
        for min_count in (1, 500, 10**6):
            got = core.NgramTable()
            got.add_chunks(chunks, order)
            gk, gc = got.pruned_grams(min_count)
            rr = ref.NgramTable()
            rr.add_chunks(chunks, order)
            rk, rc = rr.pruned_grams(min_count)
            core.sort_pairs(gk, gc)
            assert np.array_equal(gk, rk) and np.array_equal(gc, rc)


@FAST
@given(chunks=chunks_strategy(), order=st.integers(1, 7), min_count=st.integers(1, 4))
def test_pruned_expansion_equals_expand_then_filter(chunks, order, min_count):
    t = core.NgramTable()
    t.add_chunks(chunks, order)
    if len(t) == 0:
        return
    wk, wc = export_sorted(t)
    full = expand_windows(NgramCounts(wk, wc), core)
    keep = ((full.keys & np.uint64(0xFF)) <= 1) | (full.counts >= min_count)
    keys, counts = core.prune_windows(wk, wc, min_count)
    assert np.array_equal(keys, full.keys[keep]) and np.array_equal(counts, full.counts[keep])
    rk, rc = ref.prune_windows(wk, wc, min_count)
    assert np.array_equal(keys, rk) and np.array_equal(counts, rc)


@FAST
@given(pieces=st.lists(st.tuples(st.binary(max_size=20), st.integers(1, 5)), max_size=60))
def test_piece_counter_is_a_dict_of_counts(pieces):
    a, b, expected = core.PieceCounter(), core.PieceCounter(), {}
    for i, (p, c) in enumerate(pieces):
        (a if i % 2 else b).add(p, c)
        expected[p] = expected.get(p, 0) + c
    a.merge(b)
    assert a.to_dict() == expected and len(a) == len(expected)
    keys, counts = a.items()
    assert counts.dtype == np.int64 and dict(zip(keys, counts.tolist())) == expected and len(keys) == len(a)
    r = ref.PieceCounter()
    r.add_dict(expected)
    assert r.to_dict() == expected
    rk, rc = r.items()
    assert dict(zip(rk, rc.tolist())) == expected
    a.clear()
    assert a.to_dict() == {}
    with pytest.raises(TypeError):
        a.add_dict({"str": 1})


@FAST
@given(
    items=st.lists(text_chars, max_size=4),
    order=st.integers(1, 6),
    min_count=st.integers(1, 3),
    eu=st.booleans(),
)
def test_text_piece_counts_equal_chunk_piece_counts(items, order, min_count, eu):
    datas = [t.encode() for t in items] + [b"ab\nab ab\n\n\nab"]
    t = core.NgramTable()
    t.add_texts(datas, order)
    lm = build_lm(NgramCounts(*core.prune_windows(*export_sorted(t), min_count)), order, min_count)
    seg = core.BNLMCore(lm.keys, lm.L, order, eu)
    chunks = [d[a:b] for d in datas for a, b in ref.split_training_chunks(d)]
    counter = core.PieceCounter()
    seg.count_texts(datas, counter)
    assert counter.to_dict() == seg.count_pieces(chunks, {})
    r = ref.PieceCounter()
    ref.BNLMCore(lm.keys, lm.L, order, eu).count_texts(datas, r)
    assert r.to_dict() == counter.to_dict()


def test_encode_many_leaves_the_garbage_collector_as_it_was():
    import gc

    pieces, logp = make_vocab([(b"ab", 5)])
    dec = core.UnigramCore(pieces, logp)
    assert gc.isenabled()
    out = dec.encode_many([b"abab", b"xab"])
    assert gc.isenabled() and [len(o) for o in out] == [2, 2]
    gc.disable()
    try:
        dec.encode_many([b"ab"])
        assert not gc.isenabled()
    finally:
        gc.enable()


@FAST
@given(
    items=st.lists(text_chars, min_size=1, max_size=5),
    order=st.integers(1, 7),
    parts=st.integers(1, 3),
    min_count=st.integers(1, 4),
)
def test_pruned_grams_of_the_classes_sum_to_the_whole(items, order, parts, min_count):
    datas = [t.encode() for t in items]
    whole = core.NgramTable()
    whole.add_texts(datas, order)
    if len(whole) == 0:
        return
    expected = core.prune_windows(*export_sorted(whole), min_count)
    got: dict[int, int] = {}
    for k in range(parts):
        for mod in (core, ref):
            t = mod.NgramTable()
            t.add_texts(datas, order, part=k, parts=parts)
            keys, counts = t.pruned_grams(min_count)
            assert len(t) == 0  # consumed
            if mod is core:
                for key, c in zip(keys.tolist(), counts.tolist()):
                    got[key] = got.get(key, 0) + c
                ref_keys = set(keys.tolist())
            else:
                assert set(keys.tolist()) == ref_keys
    assert sorted(got.items()) == list(zip(expected[0].tolist(), expected[1].tolist()))


@FAST
@given(extra=vocab_strategy(), drop=st.lists(st.booleans(), min_size=12, max_size=12), data=texts)
def test_removing_pieces_by_minus_infinity_equals_a_smaller_vocabulary(extra, drop, data):
    pieces, logp = make_vocab(extra)
    multi = [i for i, p in enumerate(pieces) if len(p) > 1]
    removed = {i for i, d in zip(multi, drop) if d}
    kept = [i for i in range(len(pieces)) if i not in removed]
    for mod in (core, ref):
        small = mod.UnigramCore([pieces[i] for i in kept], np.ascontiguousarray(logp[kept]))
        big = mod.UnigramCore(pieces, logp)
        masked = logp.copy()
        masked[sorted(removed)] = -np.inf
        big.set_logp(np.ascontiguousarray(masked))
        got = [pieces[i] for i in big.encode(data)]
        assert got == [pieces[kept[i]] for i in small.encode(data)]
        with pytest.raises(ValueError, match="single byte"):
            bad = masked.copy()
            bad[pieces.index(b"a")] = -np.inf
            big.set_logp(np.ascontiguousarray(bad))
        with pytest.raises(ValueError, match="finite"):
            big.set_logp(np.full(len(pieces), np.nan))


@FAST
@given(
    pieces=st.dictionaries(st.binary(min_size=1, max_size=3), st.integers(1, 4), min_size=1, max_size=40),
    n=st.integers(1, 45),
    data=st.data(),
)
def test_first_pieces_by_rank_equal_the_full_sort(pieces, n, data):
    from kexue.tokenizers.pruning import _first

    keys = list(pieces)
    idx = np.array(data.draw(st.permutations(range(len(keys)))), dtype=np.int64)
    counts = np.array([pieces[keys[i]] for i in idx.tolist()], np.int64)
    ranked = sorted(
        range(len(idx)),
        key=lambda j: (len(keys[idx[j]]) > 1, -counts[j], -len(keys[idx[j]]), keys[idx[j]]),
    )
    got = _first(n, keys, idx, counts)
    assert sorted(got.tolist()) == sorted(ranked[:n])


@FAST
@given(chunks=chunks_strategy(), order=st.integers(1, 7), min_count=st.integers(1, 3))
def test_conditional_log_probs_compiled_equal_reference(chunks, order, min_count):
    t = core.NgramTable()
    t.add_chunks(chunks, order)
    if len(t) == 0:
        return
    keys, counts = core.prune_windows(*export_sorted(t), min_count)
    got, want = np.empty(len(keys) - 1), np.empty(len(keys) - 1)
    core.conditional_log_probs(keys, counts, got)
    ref.conditional_log_probs(keys, counts, want)
    assert np.array_equal(got, want)
    assert np.array_equal(
        build_lm(NgramCounts(keys, counts), order, min_count, core).L,
        build_lm(NgramCounts(keys, counts), order, min_count, ref).L,
    )
    if len(keys) > 2:  # drop a gram that is a prefix of another: both refuse
        lens = keys & np.uint64(0xFF)
        parents = [
            i
            for i in range(1, len(keys))
            if any(
                (keys[j] & np.uint64(0xFF)) == lens[i] + np.uint64(1)
                and ref.unpack_gram(int(keys[j])).startswith(ref.unpack_gram(int(keys[i])))
                for j in range(len(keys))
            )
        ]
        if parents:
            drop = np.ones(len(keys), bool)
            drop[parents[0]] = False
            for mod in (core, ref):
                with pytest.raises(ValueError, match="prefix is missing"):
                    mod.conditional_log_probs(keys[drop], counts[drop], np.empty(int(drop.sum()) - 1))
    if len(keys) > 2:
        swapped = keys.copy()
        swapped[[1, 2]] = swapped[[2, 1]]
        for mod in (core, ref):
            with pytest.raises(ValueError, match="sorted"):
                mod.conditional_log_probs(swapped, counts, np.empty(len(keys) - 1))


@FAST
@given(
    grams=st.dictionaries(
        st.lists(st.sampled_from(b"ab\x80\xe4"), min_size=2, max_size=4).map(bytes),
        st.floats(-9, 0),
        max_size=30,
    ),
    order=st.integers(2, 5),
    eu=st.booleans(),
    chunks=st.lists(st.lists(st.sampled_from(b"ab\x80\xe4c"), max_size=25).map(bytes), max_size=6),
    data=st.data(),
)
def test_bnlm_with_any_gram_set_matches_reference(grams, order, eu, chunks, data):
    # grams whose prefixes (or suffixes) are not grams, in any key order: the trie walk of the compiled
    # core must still find exactly the grams the reference finds
    from kexue.tokenizers.reference import pack_gram

    table = {bytes([b]): -5.5 - b / 100 for b in range(256)}
    table.update({g: v for g, v in grams.items() if len(g) <= order})
    items = data.draw(st.permutations(list(table.items())))
    keys = np.array([pack_gram(g) for g, _ in items], np.uint64)
    L = np.array([v for _, v in items], np.float64)
    c, r = core.BNLMCore(keys, L, order, eu), ref.BNLMCore(keys, L, order, eu)
    for ch in chunks:
        assert c.segment(ch) == r.segment(ch)
    assert c.count_pieces(chunks) == r.count_pieces(chunks)
    counter = core.PieceCounter()
    c.count_texts(chunks, counter)
    rc = ref.PieceCounter()
    r.count_texts(chunks, rc)
    assert counter.to_dict() == rc.to_dict()
    with pytest.raises(ValueError, match="NaN"):
        core.BNLMCore(keys, np.where(np.arange(len(L)) == 0, np.nan, L), order, eu)
    if len(keys) > 1:
        with pytest.raises(ValueError, match="unique"):
            core.BNLMCore(np.concatenate([keys, keys[:1]]), np.concatenate([L, L[:1]]), order, eu)


runs = st.lists(
    st.tuples(st.sampled_from([b"a", b"ab", b"\x00", b"\xe4\xb8\x80", b"\n"]), st.integers(1, 400)),
    min_size=1,
    max_size=6,
).map(lambda rs: b"".join(p * n for p, n in rs))


@FAST
@given(
    datas=st.lists(runs, min_size=1, max_size=3),
    order=st.sampled_from([5, 6, 7]),
    parts=st.integers(1, 3),
    min_count=st.integers(1, 300),
)
def test_saturated_window_counts_match_the_reference(datas, order, parts, min_count):
    # long runs push whole windows past the count field of a main word (255 at order 7): the counts, the
    # exported windows and the pruned grams must still equal the reference's, class by class
    got: dict[int, int] = {}
    want: dict[int, int] = {}
    for k in range(parts):
        c, r = core.NgramTable(1024), ref.NgramTable()
        c.add_texts(datas, order, part=k, parts=parts)
        r.add_texts(datas, order, part=k, parts=parts)
        assert len(c) == len(r)
        assert all(np.array_equal(x, y) for x, y in zip(export_sorted(c), export_sorted(r)))
        for table, out in ((c, got), (r, want)):
            for key, n in zip(*(a.tolist() for a in table.pruned_grams(min_count))):
                out[key] = out.get(key, 0) + n
    assert got == want


@FAST
@given(
    items=st.lists(text_chars, min_size=1, max_size=8),
    order=st.integers(1, 5),
    flush_at=st.integers(1, 6),
    threads=st.integers(1, 3),
)
def test_piece_buffers_flushed_into_a_shared_total_count_the_same(items, order, flush_at, threads):
    # pass 2 of training: threads count into small buffers flushed into one shared counter
    from concurrent.futures import ThreadPoolExecutor

    datas = ([t.encode() for t in items] + [b"ab ab\nabc\n"]) * 3
    t = core.NgramTable()
    t.add_texts(datas, order)
    lm = build_lm(NgramCounts(*core.prune_windows(*export_sorted(t), 1)), order, 1)
    for mod in (core, ref):
        seg = mod.BNLMCore(lm.keys, lm.L, order, True)
        plain = mod.PieceCounter()
        seg.count_texts(datas, plain)
        total, buffers = mod.PieceCounter(), [mod.PieceCounter() for _ in range(threads)]

        def work(k, seg=seg, buffers=buffers, total=total):
            seg.count_texts(datas[k::threads], buffers[k], total=total, flush_at=flush_at)

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
        assert all(len(b) < flush_at for b in buffers)
        for b in buffers:
            total.merge(b)
        assert total.to_dict() == plain.to_dict()
        with pytest.raises(ValueError, match="total"):
            seg.count_texts(datas, total, total=total)


@FAST
@given(
    pieces=st.dictionaries(st.binary(min_size=1, max_size=12), st.integers(1, 50), max_size=40),
    words=st.lists(texts, max_size=12),
)
def test_packed_pieces_and_span_splits_equal_the_object_forms(pieces, words):
    # pruning reads the piece counts as one buffer + offsets and splits spans of it, not bytes objects
    for mod in (core, ref):
        c = mod.PieceCounter()
        c.add_dict(pieces)
        buf, offsets, counts = c.packed()
        keys, kcounts = c.items()
        assert offsets[0] == 0 and len(offsets) == len(keys) + 1 and offsets[-1] == len(buf)
        assert [buf[a:b] for a, b in zip(offsets[:-1], offsets[1:])] == keys
        assert np.array_equal(counts, kcounts)
    vocab, logp = make_vocab([(w, 3) for w in {w for w in words if 1 < len(w) <= 6}])
    data = b"".join(words)
    lens = np.array([len(w) for w in words], np.int64)
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64) if words else np.zeros(0, np.int64)
    weights = np.arange(1, len(words) + 1, dtype=np.int64)
    results = []
    for mod in (core, ref):
        dec = mod.UnigramCore(vocab, logp)
        a, b = np.zeros(len(vocab), np.int64), np.zeros(len(vocab), np.int64)
        dec.split_counts(list(words), weights, a)
        dec.split_spans(data, starts, lens, weights, b)
        assert np.array_equal(a, b)
        results.append(b)
        with pytest.raises(ValueError, match="outside the buffer"):
            dec.split_spans(
                data, np.array([len(data)], np.int64), np.ones(1, np.int64), np.ones(1, np.int64), b
            )
        with pytest.raises(ValueError, match="same length"):
            dec.split_spans(data, starts, lens, np.ones(len(words) + 1, np.int64), b)
    assert np.array_equal(results[0], results[1])


def test_sampler_on_long_chunks_with_many_segmentations_matches_reference_and_log_z():
    # a run of 'a' with pieces a / aa / aaa has tribonacci-many segmentations (about 1.84**n): the sampler's
    # running multiplier passes 1e30 and is folded into the log score many times over; the draws must
    # still equal the reference's and log Z the exact count's logarithm (alpha = 0: all paths weigh 1)
    vocab, logp = make_vocab([(b"aa", 7), (b"aaa", 5)])
    c, r = core.UnigramCore(vocab, logp), ref.UnigramCore(vocab, logp)
    n = 1500  # 1.84**1500 > 1e397: a multiplier that is never folded would overflow
    x = b"a" * n
    trib = [1, 1, 2]
    for _ in range(3, n + 1):
        trib.append(trib[-1] + trib[-2] + trib[-3])
    assert c.log_partition(x, 0.0) == pytest.approx(math.log(trib[n]), rel=1e-12)
    assert c.log_partition(x, 0.7) == r.log_partition(x, 0.7)
    for seed in range(4):
        for alpha in (0.0, 0.1, 1.0):
            got = c.tokenize(x, False, True, alpha, seed)
            assert got == r.tokenize(x, False, True, alpha, seed) and b"".join(got) == x

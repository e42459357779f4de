"""BytePiece Trainer: exactness (reference, original package, workers, shards, Ray), invariants, bad input."""

from __future__ import annotations

import contextlib
import io
import unicodedata

import numpy as np
import pytest

from kexue.data import stdlib_text
from kexue.tokenizers import HAVE_COMPILED_CORE, FileCorpus, Tokenizer, Trainer
from kexue.tokenizers.pruning import split_pieces
from kexue.tokenizers.reference import UnigramCore

WORDS = [
    "中国",
    "人民",
    "今天",
    "天气",
    "不错",
    "我们",
    "经济",
    "发展",
    "的",
    "了",
    "是",
    "在",
    "，",
    "。",
    "１９９８年",
    "2023年",
    "12月",
    "北京",
    "上海",
    "研究",
    "模型",
    "分词",
]
RARE = "龘靐齉爩鱻麤"


def chinese_corpus(n_lines: int = 300, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_lines):
        words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(5, 25))]
        if i % 37 == 0:
            words.insert(int(rng.integers(0, len(words))), RARE[i % len(RARE)])
        lines.append("".join(words) + ("\n" if i % 3 else "\n\n"))
    return lines


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return chinese_corpus() + stdlib_text(40_000, seed=1).splitlines(keepends=True)


@pytest.fixture(scope="module")
def trained(corpus):
    trainer = Trainer(order=6, max_vocab_size=[900, 600], min_count=3, max_piece_length=12)
    return trainer, trainer.train(corpus)


def vocab(tok: Tokenizer) -> dict[bytes, int]:
    return dict(zip(tok.pieces, tok.counts.tolist()))


def test_trainer_returns_one_model_per_size(trained):
    trainer, toks = trained
    assert [t.vocab_size <= s for t, s in zip(toks, (900, 600))] == [True, True]
    assert toks[0].vocab_size > toks[1].vocab_size > 259
    assert set(toks[1].pieces) <= set(toks[0].pieces) | set(trainer.vocabularies[1])
    assert toks[0].trainer_options["order"] == 6


def test_vocabulary_invariants(trained):
    trainer, toks = trained
    for tok in toks:
        dec = UnigramCore(tok.pieces, tok.log_probs)
        for p in tok.pieces:
            assert dec.tokenize(p, chunked=False) == [p]  # redundancy-loop fixed point
            if len(p) > 1:
                assert len(p) <= 12
                p.decode("utf-8")  # ensure_unicode: multi-byte pieces are whole characters
        assert all(bytes([b]) in set(tok.pieces) for b in range(256))


def test_compression_beats_bytes_and_round_trips(trained, corpus):
    tok = trained[1][0]
    text = "".join(corpus[:60] + corpus[-400:])
    ids = tok.encode(text)
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)
    code = "".join(corpus[-400:]).encode()
    assert len(code) / len(tok.encode(code)) > 2.2


@pytest.mark.skipif(not HAVE_COMPILED_CORE, reason="compiled core not built")
def test_compiled_and_reference_trainers_agree(corpus):
    small = corpus[:40] + corpus[-150:]
    a = Trainer(order=5, max_vocab_size=400, min_count=2, core="compiled")
    b = Trainer(order=5, max_vocab_size=400, min_count=2, core="python")
    ta, tb = a.train(small), b.train(small)
    assert vocab(ta) == vocab(tb)
    assert a.piece_counts == b.piece_counts
    assert (a.lm.keys == b.lm.keys).all() and (a.lm.L == b.lm.L).all()


def test_result_does_not_depend_on_workers_or_shards(corpus, trained):
    ref = trained[1][1]
    for workers, shard_chars in ((1, 7_000), (2, 20_000)):
        tok = Trainer(order=6, max_vocab_size=[900, 600], min_count=3, max_piece_length=12).train(
            corpus, workers=workers, shard_chars=shard_chars
        )[1]
        assert vocab(tok) == vocab(ref)


def test_file_corpus_gives_the_same_model(corpus, trained, tmp_path):
    paths = []
    for i in range(2):
        p = tmp_path / f"part{i}.txt"
        half = corpus[i * len(corpus) // 2 : (i + 1) * len(corpus) // 2]
        p.write_text("".join(half) + "\n" * 150, encoding="utf-8")  # a run of newlines over the cap
        paths.append(p)
    texts = [p.read_text(encoding="utf-8") for p in paths]
    fc = FileCorpus(paths, block_chars=3000)
    assert "".join(fc) == "".join(texts) and sum(1 for _ in fc) > 4
    a = Trainer(order=6, max_vocab_size=600, min_count=3, max_piece_length=12).train(fc)
    b = Trainer(order=6, max_vocab_size=600, min_count=3, max_piece_length=12).train(texts)
    assert vocab(a) == vocab(b)


def test_isolate_digits_keeps_digits_alone(corpus):
    tok = Trainer(order=6, max_vocab_size=700, min_count=3, isolate_digits=True).train(corpus)
    for p in tok.pieces:
        s = p.decode("utf-8", errors="ignore")
        if any(ch.isdecimal() for ch in s):
            assert len(s) == 1, p


def test_matches_the_original_trainer():
    bytepiece = pytest.importorskip("bytepiece")
    try:
        bytepiece.Tokenizer({"YQ==": [3, "a", 1]}).tokenize("a")
    except TypeError:
        pytest.skip("pyahocorasick is the unicode build; the original trainer cannot run")
    # ASCII text plus frequent Chinese words: no character is rare, so upstream's ensure_unicode trap
    # (which we fix) does not fire and the two trainers must agree exactly.
    texts = stdlib_text(8_000, seed=3).splitlines() + ["".join(WORDS[:8]) * 3] * 20
    orig = bytepiece.Trainer(order=5, max_vocab_size=500, min_count=2)
    with contextlib.redirect_stderr(io.StringIO()):
        orig.train(texts)
    ours = Trainer(order=5, max_vocab_size=500, min_count=2).train(texts)
    assert vocab(ours) == orig.pieces[0]


@pytest.mark.slow
def test_ray_backend_gives_the_same_model(corpus):
    ray = pytest.importorskip("ray")
    small = corpus[:80]
    local = Trainer(order=4, max_vocab_size=400, min_count=2).train(small)
    # train() starts a local Ray instance (1 CPU), runs both map passes as Ray tasks, and shuts it down
    remote = Trainer(order=4, max_vocab_size=400, min_count=2).train(
        small, backend="ray", workers=1, shard_chars=2_000
    )
    assert not ray.is_initialized()
    assert vocab(remote) == vocab(local)


def test_split_pieces_moves_counts_to_the_decoded_parts():
    keep = {bytes([b]): 1 for b in range(256)} | {b"ab": 50, b"cd": 40}
    from kexue.tokenizers._backend import resolve_core

    out = split_pieces(keep, [(b"abcd", 3), (b"abx", 2)], resolve_core("auto"))
    assert out == {b"ab": 5, b"cd": 3, b"x": 2}


def test_bad_input():
    t = Trainer(max_vocab_size=300)
    with pytest.raises(TypeError, match="re-iterable"):
        t.train(x for x in ["abc"])
    with pytest.raises(TypeError, match="corpus item 1 must be str or bytes"):
        t.train(["abc", 5])
    with pytest.raises(ValueError, match="not valid UTF-8"):
        t.train([b"\xff\xfe"])
    with pytest.raises(ValueError, match="empty"):
        t.train([])
    with pytest.raises(ValueError, match="empty"):
        t.train(["", ""])
    with pytest.raises(TypeError, match="single str"):
        t.train("abc")
    with pytest.raises(ValueError, match="order"):
        Trainer(order=0)
    with pytest.raises(ValueError, match="order"):
        Trainer(order=8)
    with pytest.raises(ValueError, match="max_vocab_size"):
        Trainer(max_vocab_size=258)
    with pytest.raises(ValueError, match="min_count"):
        Trainer(min_count=0)
    with pytest.raises(TypeError, match="isolate_digits"):
        Trainer(isolate_digits=1)
    with pytest.raises(ValueError, match="backend"):
        t.train(["abc"], backend="spark")
    with pytest.raises(ValueError, match="workers"):
        t.train(["abc"], workers=0)


def test_lm_min_count_prunes_the_lm_apart_from_the_pieces(corpus):
    from kexue.tokenizers.reference import count_all_ngrams, pack_gram
    from kexue.tokenizers.text import training_chunks

    small = corpus[:60] + corpus[-120:]
    a = Trainer(order=5, max_vocab_size=500, min_count=2, lm_min_count=6, core="compiled")
    b = Trainer(order=5, max_vocab_size=500, min_count=2, lm_min_count=6, core="python")
    ta, tb = a.train(small), b.train(small, workers=2)
    assert vocab(ta) == vocab(tb) and (a.lm.keys == b.lm.keys).all() and (a.lm.L == b.lm.L).all()
    direct = count_all_ngrams([c for t in small for c in training_chunks(t)], 5)
    kept = {g for g, c in direct.items() if len(g) == 1 or (len(g) >= 1 and c >= 6)}
    assert set(a.lm.keys.tolist()) == {pack_gram(g) for g in kept} | {(b << 56) | 1 for b in range(256)}
    plain = Trainer(order=5, max_vocab_size=500, min_count=2)
    plain.train(small)
    assert len(a.lm) < len(plain.lm)  # a sparser LM than the default (lm_min_count = min_count)
    assert all(c >= 2 for p, c in a.vocabularies[0].items() if len(p) > 1)  # pieces: min_count
    assert ta.trainer_options["lm_min_count"] == 6 and plain.options()["lm_min_count"] == 2
    with pytest.raises(ValueError, match="lm_min_count"):
        Trainer(lm_min_count=0)
    with pytest.raises(TypeError, match="lm_min_count"):
        Trainer(lm_min_count="3")

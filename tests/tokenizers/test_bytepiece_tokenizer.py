"""BytePiece Tokenizer: round trips, vocabulary invariants, files, sampling API, bad input."""

from __future__ import annotations

import base64
import json
import os
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexue.tokenizers import HAVE_COMPILED_CORE, Tokenizer, Trainer
from kexue.tokenizers import serialization as ser

DATA = Path(__file__).parent / "data"
MODEL = DATA / "tiny_bytepiece.model"
EXPECTED = json.loads((DATA / "tiny_bytepiece_expected.json").read_text(encoding="utf-8"))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer(MODEL)


def test_loads_original_model_and_reproduces_its_tokens(tok):
    # ids recorded from bytepiece 0.6.3 on the same model file
    for case in EXPECTED:
        assert tok.encode(case["text"]) == case["ids"]
        assert tok.tokenize(case["text"]) == [base64.b64decode(p) for p in case["pieces"]]


def test_matches_installed_original_package(tok):
    bytepiece = pytest.importorskip("bytepiece")
    try:
        orig = bytepiece.Tokenizer(str(MODEL))
        orig.tokenize("probe")
    except TypeError:
        pytest.skip("pyahocorasick is the unicode build; the original tokenizer cannot run")
    texts = [c["text"] for c in EXPECTED] + ["中华人民共和国\n\n今天 weather ok 1998年\r\n", "x" * 50]
    for t in texts:
        assert tok.encode(t) == orig.encode(t)
        assert tok.decode(tok.encode(t)) == orig.decode(orig.encode(t))


@SETTINGS
@given(
    text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)
    | st.sampled_from(
        ["", "\r\n\r\n", "\n\n\nx\n", "e\u0301\u0323 Å", "１２３４５ 12345", "😀👍🏽 中文", "\x00\x00"]
    )
)
def test_round_trip_is_nfc(tok, text):
    nfc = unicodedata.normalize("NFC", text)
    ids = tok.encode(text)
    assert tok.decode(ids) == nfc
    assert b"".join(tok.tokenize(text)) == nfc.encode("utf-8")
    assert all(3 <= i < tok.vocab_size for i in ids)


@SETTINGS
@given(data=st.binary(max_size=200), alpha=st.none() | st.floats(0, 2))
def test_bytes_round_trip_is_exact(tok, data, alpha):
    assert tok.decode_bytes(tok.encode(data, alpha=alpha, seed=1)) == data


def test_normalize_none_keeps_the_exact_text(tok):
    t = Tokenizer(MODEL, normalize=None)
    s = "e\u0301"
    assert t.decode(t.encode(s)) == s
    assert tok.decode(tok.encode(s)) == "\u00e9"


def test_vocabulary_invariants(tok):
    assert tok.vocab_size == len(tok.pieces) + 3
    for b in range(256):
        assert 3 <= tok.piece_to_id(bytes([b])) < tok.vocab_size
    ids = [tok.piece_to_id(p) for p in tok.pieces]
    assert ids == list(range(3, tok.vocab_size))
    assert [tok.id_to_piece(i) for i in range(3)] == ["<pad>", "<bos>", "<eos>"]
    assert [tok.piece_to_id(s) for s in ("<pad>", "<bos>", "<eos>")] == [0, 1, 2]
    assert tok.id_to_piece(ids[-1]) == tok.pieces[-1]
    assert np.allclose(np.exp(tok.log_probs).sum(), 1.0)
    assert tok.encode("abc", add_bos=True, add_eos=True)[0] == 1
    assert tok.encode("abc", add_bos=True, add_eos=True)[-1] == 2
    assert tok.decode([1, *tok.encode("abc"), 2, 0]) == "abc"


def test_save_load_round_trip(tok, tmp_path):
    text = EXPECTED[0]["text"]
    for fmt in ("kexue", "bytepiece"):
        path = tok.save(tmp_path / f"m.{fmt}", format=fmt)
        again = Tokenizer.load(path)
        assert again.pieces == tok.pieces and (again.counts == tok.counts).all()
        assert again.encode(text) == tok.encode(text)
    doc = json.loads((tmp_path / "m.kexue").read_text(encoding="utf-8"))
    assert doc["format"] == "kexue.bytepiece" and doc["num_pieces"] == len(tok.pieces)
    assert sorted(os.listdir(tmp_path)) == ["m.bytepiece", "m.kexue"]


def test_interrupted_save_leaves_no_partial_file(tok, tmp_path, monkeypatch):
    target = tmp_path / "model.json"
    tok.save(target)
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        tok.save(target)
    with pytest.raises(KeyboardInterrupt):
        tok.save(tmp_path / "new.json")
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.json"]


def test_corrupted_model_files_raise(tok, tmp_path):
    good = tok.save(tmp_path / "good.json").read_text(encoding="utf-8")
    cases = {
        "truncated": (good[: len(good) // 2], "not valid JSON"),
        "checksum": (good.replace('"pieces": [', '"pieces": [\n["YQ==", 1],', 1), "num_pieces|checksum"),
        "format": (json.dumps({"format": "other"}), "unknown model format"),
        "array": ("[1, 2]", "JSON object"),
    }
    doc = json.loads(good)
    doc["pieces"][0][1] = 0
    doc["sha256"] = ser._digest(doc["pieces"])
    cases["count"] = (json.dumps(doc), "positive integer")
    orig = json.loads(MODEL.read_text(encoding="utf-8"))
    first = next(k for k, v in orig.items() if len(base64.b64decode(k)) == 1)
    cases["missing byte"] = (
        json.dumps({k: v for k, v in orig.items() if k != first}),
        "ids must be dense|256",
    )
    holed = dict(orig)
    holed[first] = [10**6, "", 1]
    cases["sparse ids"] = (json.dumps(holed), "dense")
    cases["base64"] = (json.dumps({"@@": [3, "", 1]}), "base64")
    for name, (text, match) in cases.items():
        p = tmp_path / f"{name}.json"
        p.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=match):
            Tokenizer(p)
    with pytest.raises(FileNotFoundError):
        Tokenizer(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="256 single bytes"):
        Tokenizer({b"ab": 3, b"a": 1})


def test_sampling_is_seeded_and_valid(tok):
    text = EXPECTED[0]["text"]
    a = tok.tokenize(text, alpha=0.1, seed=3)
    assert a == tok.tokenize(text, alpha=0.1, seed=3)
    assert a != tok.tokenize(text, alpha=0.1, seed=4)
    assert b"".join(a) == unicodedata.normalize("NFC", text).encode()
    assert len(a) > len(tok.tokenize(text))  # small alpha: finer segmentations than Viterbi
    assert tok.tokenize(text, alpha=1e4, seed=0) == tok.tokenize(text)
    t1, t2 = Tokenizer(MODEL, seed=5), Tokenizer(MODEL, seed=5)
    assert t1.encode(text, alpha=0.3) == t2.encode(text, alpha=0.3)
    g = np.random.default_rng(0)
    assert tok.encode(text, alpha=0.3, seed=g) != tok.encode(text, alpha=0.3, seed=g)
    assert tok.encode(text, alpha=-1) == tok.encode(text)


def test_encode_batch_matches_encode_and_ignores_thread_count(tok):
    texts = [c["text"] for c in EXPECTED] * 6
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    one = tok.encode_batch(texts, alpha=0.2, seed=11, num_threads=1)
    assert one == tok.encode_batch(texts, alpha=0.2, seed=11, num_threads=3)
    assert one[0] != one[len(EXPECTED)]  # equal texts, different streams
    with pytest.raises(TypeError, match="iterable of texts"):
        tok.encode_batch("abc")


@pytest.mark.skipif(not HAVE_COMPILED_CORE, reason="compiled core not built")
def test_python_and_compiled_tokenizers_agree(tok):
    py = Tokenizer(MODEL, core="python")
    assert py.core == "python" and tok.core == "compiled"
    for case in EXPECTED[1:]:
        t = case["text"]
        assert py.encode(t) == tok.encode(t)
        assert py.encode(t, alpha=0.5, seed=9) == tok.encode(t, alpha=0.5, seed=9)
        assert py.log_partition(t, 0.7) == pytest.approx(tok.log_partition(t, 0.7), rel=1e-12)


def test_bad_inputs(tok):
    for alpha in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be finite"):
            tok.encode("abc", alpha=alpha)
    with pytest.raises(TypeError, match="alpha"):
        tok.encode("abc", alpha="0.1")
    with pytest.raises(TypeError, match="text must be str or bytes"):
        tok.encode(123)
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TypeError, match="integers"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="out of range"):
        tok.id_to_piece(10**6)
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.piece_to_id(b"\x00" * 40)
    with pytest.raises(ValueError, match="seed"):
        tok.encode("abc", alpha=0.1, seed=-1)
    with pytest.raises(ValueError, match="normalize"):
        Tokenizer(MODEL, normalize="NFKC")
    with pytest.raises(ValueError, match="core"):
        Tokenizer(MODEL, core="gpu")
    with pytest.raises(TypeError, match="pieces must be"):
        Tokenizer(3.5)


def test_pickles(tok):
    import pickle

    again = pickle.loads(pickle.dumps(tok))
    assert again.encode(EXPECTED[2]["text"]) == tok.encode(EXPECTED[2]["text"])


def test_tokenizer_from_counts_orders_ids_like_bytepiece():
    counts = {bytes([b]): 1 for b in range(256)} | {b"zz": 5, b"ab": 7, "中".encode(): 2}
    t = Tokenizer(counts)
    multi = [p for p in t.pieces if len(p) > 1]
    assert multi == [b"ab", b"zz", "中".encode()]
    assert Trainer  # the trainer module imports cleanly alongside


def test_falls_back_to_the_reference_core_without_the_extension(monkeypatch):
    import importlib
    import sys

    import kexue.tokenizers as package
    from kexue.tokenizers import _backend, reference

    monkeypatch.setitem(sys.modules, "kexue.tokenizers._core", None)  # as if the extension was not built
    monkeypatch.delattr(package, "_core", raising=False)
    try:
        fresh = importlib.reload(_backend)
        assert not fresh.HAVE_COMPILED_CORE
        assert fresh.resolve_core("auto") is reference
        with pytest.raises(ImportError, match="not built"):
            fresh.resolve_core("compiled")
    finally:
        monkeypatch.undo()
        importlib.reload(_backend)
    assert Tokenizer(MODEL, core="python").encode(EXPECTED[2]["text"]) == EXPECTED[2]["ids"]

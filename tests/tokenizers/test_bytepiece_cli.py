"""``kexue bytepiece`` commands: train, encode, decode, inspect."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from kexue.data import stdlib_text
from kexue.tokenizers import Tokenizer
from kexue.tokenizers.cli import app

runner = CliRunner()


def test_train_encode_decode_inspect(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(stdlib_text(30_000, seed=2) + "\n今天天气不错。\n" * 200, encoding="utf-8")
    model = tmp_path / "m.json"
    res = runner.invoke(
        app, ["train", str(corpus), "--vocab-size", "500", "-o", str(model), "--min-count", "3", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    tok = Tokenizer(model)
    assert tok.vocab_size <= 500 and tok.trainer_options["min_count"] == 3

    text = "def f(x):\n    return x  # 今天天气不错"
    res = runner.invoke(app, ["encode", str(model), text])
    assert res.exit_code == 0, res.output
    ids = [int(w) for w in res.output.split()]
    assert ids == tok.encode(text)

    res = runner.invoke(app, ["decode", str(model), *map(str, ids)])
    assert res.exit_code == 0 and res.stdout_bytes.decode() == text

    res = runner.invoke(app, ["encode", str(model), "def f(x):\n    return x", "--pieces"])
    assert "".join(json.loads(res.output)) == "def f(x):\n    return x"
    res = runner.invoke(app, ["encode", str(model), text, "--pieces", "--alpha", "0.1", "--seed", "3"])
    assert json.loads(res.output) == [
        p.decode("utf-8", "backslashreplace") for p in tok.tokenize(text, 0.1, 3)
    ]

    res = runner.invoke(app, ["inspect", str(model), "--text", text * 10, "--top", "5"])
    assert res.exit_code == 0, res.output
    assert "bytes / token" in res.output and "longest pieces" in res.output
    assert str(tok.vocab_size) in res.output


def test_cli_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    res = runner.invoke(app, ["encode", str(bad), "x"])
    assert res.exit_code == 2 and "not valid JSON" in res.output
    res = runner.invoke(app, ["train", str(tmp_path / "nope.txt"), "--vocab-size", "300", "-o", str(bad)])
    assert res.exit_code == 2 and "does not exist" in res.output
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n", encoding="utf-8")
    res = runner.invoke(app, ["train", str(corpus), "--vocab-size", "100", "-o", str(bad)])
    assert res.exit_code == 2 and "max_vocab_size" in res.output

"""The claim harness: contract validation, verdicts from checks, runner isolation, the HTML/Markdown report."""

from __future__ import annotations

import math
import types
from html.parser import HTMLParser
from pathlib import Path

import pytest

import kexue.repro as repro
from kexue.repro import Check, Claim, Result, Table, implemented_slugs, load
from kexue.repro.catalog import BY_SLUG, POSTS
from kexue.repro.report import atomic_write, write_report
from kexue.repro.runner import Outcome, resolve_slugs, run_one


def test_catalogue_matches_specs_when_available():
    spec_dir = Path(__file__).resolve().parents[2].parent / "shared" / "spec"
    if not spec_dir.is_dir():
        pytest.skip("../shared/spec not beside the checkout")
    assert {p.stem for p in spec_dir.glob("*.md")} == {p.slug for p in POSTS}


def test_catalogue_entries_are_valid_claims():
    for p in POSTS:
        Claim(p.slug, p.title, p.title_zh, p.url, p.date, "x")  # validates slug and date formats
        assert p.url.startswith("https://kexue.fm/archives/")


@pytest.mark.parametrize("slug", implemented_slugs())
def test_every_implemented_module_honours_the_contract(slug):
    mod = load(slug)
    post = BY_SLUG[slug]
    assert mod.CLAIM.url == post.url and mod.CLAIM.date == post.date
    assert mod.CLAIM.claim.strip()


def test_verdict_is_computed_from_checks():
    r = Result()
    assert r.verdict == "inconclusive"
    r.check("a", True, x=1)
    assert r.verdict == "reproduced"
    r.check_le("b", 2.0, 1.0)
    assert r.verdict == "not reproduced"
    assert not Result(checks=[Check("nan", False)]).checks[0].passed
    r2 = Result()
    r2.check_ge("nan fails", math.nan, 0.0)
    assert r2.verdict == "not reproduced"


def test_check_values_must_be_numbers():
    with pytest.raises(TypeError, match="must be a number"):
        Result().check("x", True, v="text")


def test_bad_claim_and_table():
    with pytest.raises(ValueError, match="slug"):
        Claim("Bad Slug", "t", "z", "u", "2024-01-01", "c")
    with pytest.raises(ValueError, match="date"):
        Claim("ok", "t", "z", "u", "January", "c")
    with pytest.raises(ValueError, match="cells"):
        Table(["a", "b"], [[1]])


def test_unknown_and_unimplemented_slugs():
    with pytest.raises(ValueError, match="Valid slugs: .*retry"):
        resolve_slugs(["no-such-slug"])
    missing = [s for s in repro.all_slugs() if not repro.is_implemented(s)]
    if missing:
        with pytest.raises(ValueError, match="not implemented"):
            resolve_slugs([missing[0]])
    assert resolve_slugs(["retry", "retry"]) == ["retry"]
    with pytest.raises(KeyError, match="unknown slug"):
        load("no-such-slug")


def _fake_module(run):
    mod = types.SimpleNamespace()
    mod.CLAIM = Claim("retry", "T", "Z", "https://kexue.fm/archives/9938", "2024-01-14", "claim")
    mod.run = run
    return mod


def test_a_raising_claim_becomes_an_error_outcome(monkeypatch, tmp_path):
    def boom(mode, seed, out):
        raise RuntimeError("kaput")

    monkeypatch.setattr("kexue.repro.runner.load", lambda slug: _fake_module(boom))
    o = run_one("retry", "quick", 0, tmp_path)
    assert o.verdict == "error" and "kaput" in o.error and o.claim is not None


def test_wrong_return_type_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setattr("kexue.repro.runner.load", lambda slug: _fake_module(lambda m, s, o: {"a": 1}))
    o = run_one("retry", "quick", 0, tmp_path)
    assert o.verdict == "error" and "expected kexue.repro.Result" in o.error


def test_bad_mode_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        run_one("retry", "fast", 0, tmp_path)


class _ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[tuple[str, str]] = []
        self.imgs = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append((a["data-slug"], a["data-verdict"]))
        if tag == "img":
            assert a["src"].startswith("data:image/png;base64,")  # self-contained
            self.imgs += 1


def _png(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_report_has_a_section_and_verdict_for_every_implemented_slug(tmp_path):
    outcomes = []
    for i, slug in enumerate(implemented_slugs()):
        mod = load(slug)
        r = Result(metrics={"m": 1.5})
        r.check("first", True, a=1.0)
        r.check("second", i % 2 == 0, b=2.0)
        r.table = Table(["x", "y"], [[1, "<b>"]], caption="cap")
        r.add_figure(_png(tmp_path / f"{slug}.png"))
        outcomes.append(Outcome(slug, mod.CLAIM, r, None, 0.1, "quick", 0))
    outcomes.append(Outcome("retry", None, None, "Traceback\nRuntimeError: x", 0.2, "quick", 0))
    html_path, md_path = write_report(outcomes, tmp_path / "report")
    parser = _ReportParser()
    parser.feed(html_path.read_text(encoding="utf-8"))
    assert parser.sections == [(o.slug, o.verdict) for o in outcomes]
    assert parser.sections[-1][1] == "error"
    assert parser.imgs == len(outcomes) - 1
    text = html_path.read_text(encoding="utf-8")
    assert "&lt;b&gt;" in text  # table cells are escaped
    md = md_path.read_text(encoding="utf-8")
    for o in outcomes:
        assert f"## {o.slug}" in md
    assert "**Verdict: error**" in md


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "x.txt"
    atomic_write(target, "old")

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OSError):
        atomic_write(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]

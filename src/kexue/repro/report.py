"""Write the reproduction report: ``index.html`` (self-contained, figures inlined) and ``report.md``.

Everything in the report comes from :class:`~kexue.repro.runner.Outcome` objects; verdicts are the
ones computed from the checks. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import platform
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kexue import __version__
from kexue.repro.base import Table, format_number
from kexue.repro.catalog import BY_SLUG
from kexue.repro.runner import Outcome

__all__ = ["atomic_write", "render_html", "render_markdown", "write_report"]

_VERDICT_COLOUR = {
    "reproduced": "#1a7f37",
    "not reproduced": "#cf222e",
    "inconclusive": "#9a6700",
    "error": "#8250df",
}


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int | float):
        return format_number(float(v))
    return str(v)


def _title(o: Outcome) -> tuple[str, str, str, str, str]:
    """(title, Chinese title, url, date, claim sentence)."""
    if o.claim is not None:
        c = o.claim
        return c.title, c.title_zh, c.url, c.date, c.claim
    p = BY_SLUG.get(o.slug)
    if p is None:
        return o.slug, "", "", "", ""
    return p.title, p.title_zh, p.url, p.date, "(the module failed before its claim could be read)"


# --- markdown -------------------------------------------------------------------------------


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def _md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_md_escape(str(c)) for c in columns) + " |"]
    lines.append("|" + "---|" * len(columns))
    lines += ["| " + " | ".join(_md_escape(_cell(v)) for v in row) + " |" for row in rows]
    return lines


def render_markdown(outcomes: Sequence[Outcome], out: Path, meta: dict[str, str]) -> str:
    lines = ["# kexue reproduction report", ""]
    lines.append(" · ".join(f"{k}: {v}" for k, v in meta.items()))
    lines += ["", "## Summary", ""]
    rows = []
    for o in outcomes:
        title = _title(o)[0]
        nchecks = len(o.result.checks) if o.result else 0
        npass = sum(c.passed for c in o.result.checks) if o.result else 0
        rows.append([f"[{o.slug}](#{o.slug})", title, o.verdict, f"{npass}/{nchecks}", f"{o.runtime:.1f} s"])
    lines += _md_table(["slug", "post", "verdict", "checks", "runtime"], rows)
    for o in outcomes:
        title, zh, url, date, claim = _title(o)
        lines += ["", f"## {o.slug}", "", f"**{title}** ({zh}) — [{url}]({url}), {date}", ""]
        lines += [f"> {claim}", "", f"**Verdict: {o.verdict}** · runtime {o.runtime:.1f} s · mode {o.mode}"]
        if o.error is not None:
            lines += ["", "```", o.error.rstrip(), "```"]
            continue
        r = o.result
        assert r is not None
        if r.metrics:
            lines += ["", "Metrics:", ""]
            lines += _md_table(["metric", "value"], [[k, v] for k, v in r.metrics.items()])
        lines += ["", "Checks:", ""]
        lines += _md_table(
            ["check", "passed", "numbers"],
            [[c.name, "✅" if c.passed else "❌", c.describe()] for c in r.checks],
        )
        for t in r.all_tables():
            lines += ["", f"Table: {t.caption}" if t.caption else "Table:", ""]
            lines += _md_table(t.columns, t.rows)
        for fig in r.figures:
            rel = os.path.relpath(Path(fig).resolve(), Path(out).resolve())
            lines += ["", f"![{o.slug}: {Path(fig).stem}]({Path(rel).as_posix()})"]
        if r.notes:
            lines += ["", r.notes]
    return "\n".join(lines) + "\n"


# --- html -----------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
h1{margin-bottom:.2em} .meta{color:#59636e;font-size:.9em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em} th,td{border:1px solid #d1d9e0;padding:.25em .6em;
text-align:left;vertical-align:top} th{background:#f6f8fa}
section{border-top:2px solid #d1d9e0;margin-top:2em;padding-top:.5em}
.verdict{display:inline-block;color:#fff;border-radius:1em;padding:.05em .8em;font-weight:600}
.pass{color:#1a7f37;font-weight:600} .fail{color:#cf222e;font-weight:600}
blockquote{border-left:4px solid #d1d9e0;margin:.5em 0;padding:.1em 1em;color:#393f46}
img{max-width:100%;border:1px solid #eee;margin:.4em 0} pre{background:#f6f8fa;padding:.8em;overflow:auto}
.zh{color:#59636e}
"""


def _badge(verdict: str) -> str:
    colour = _VERDICT_COLOUR.get(verdict, "#59636e")
    return f'<span class="verdict" style="background:{colour}">{html.escape(verdict)}</span>'


def _html_table(t: Table | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    caption = f"<caption>{html.escape(t.caption)}</caption>" if t is not None and t.caption else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{v if isinstance(v, _Raw) else html.escape(_cell(v))}</td>" for v in row)
        + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


class _Raw(str):
    """A string already escaped for HTML."""


def _img(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    alt = html.escape(Path(path).stem)
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def render_html(outcomes: Sequence[Outcome], meta: dict[str, str]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>kexue reproduction report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>kexue reproduction report</h1>",
        '<p class="meta">'
        + " · ".join(f"{html.escape(k)}: {html.escape(v)}" for k, v in meta.items())
        + "</p>",
        "<h2>Summary</h2>",
    ]
    rows = []
    for o in outcomes:
        nchecks = len(o.result.checks) if o.result else 0
        npass = sum(c.passed for c in o.result.checks) if o.result else 0
        rows.append(
            [
                _Raw(f'<a href="#{html.escape(o.slug)}">{html.escape(o.slug)}</a>'),
                _title(o)[0],
                _Raw(_badge(o.verdict)),
                f"{npass}/{nchecks}",
                f"{o.runtime:.1f} s",
            ]
        )
    parts.append(_html_table(None, ["slug", "post", "verdict", "checks", "runtime"], rows, "summary"))
    for o in outcomes:
        title, zh, url, date, claim = _title(o)
        parts.append(
            f'<section id="{html.escape(o.slug)}" data-slug="{html.escape(o.slug)}" '
            f'data-verdict="{html.escape(o.verdict)}">'
        )
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(
            f'<p><span class="zh">{html.escape(zh)}</span><br><a href="{html.escape(url)}">'
            f"{html.escape(url)}</a> · {html.escape(date)} · <code>{html.escape(o.slug)}</code></p>"
        )
        parts.append(f"<blockquote>{html.escape(claim)}</blockquote>")
        parts.append(
            f'<p>Verdict: {_badge(o.verdict)} · runtime <span class="runtime">{o.runtime:.1f} s</span>'
            f" · mode {html.escape(o.mode)} · seed {o.seed}</p>"
        )
        if o.error is not None:
            parts.append(f'<pre class="error">{html.escape(o.error)}</pre></section>')
            continue
        r = o.result
        assert r is not None
        if r.metrics:
            parts.append("<h3>Metrics</h3>")
            parts.append(
                _html_table(None, ["metric", "value"], [[k, v] for k, v in r.metrics.items()], "metrics")
            )
        parts.append("<h3>Checks</h3>")
        check_rows = [
            [
                c.name,
                _Raw('<span class="pass">pass</span>' if c.passed else '<span class="fail">fail</span>'),
                c.describe(),
            ]
            for c in r.checks
        ]
        parts.append(_html_table(None, ["check", "result", "numbers"], check_rows, "checks"))
        for t in r.all_tables():
            parts.append(_html_table(t, t.columns, t.rows, "data"))
        for fig in r.figures:
            parts.append(_img(fig))
        if r.notes:
            parts.append(f"<p>{html.escape(r.notes)}</p>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_meta(outcomes: Sequence[Outcome]) -> dict[str, str]:
    mode = outcomes[0].mode if outcomes else "quick"
    seed = str(outcomes[0].seed) if outcomes else "0"
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.verdict] = counts.get(o.verdict, 0) + 1
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover - torch is a dependency
        torch_version = "?"
    return {
        "generated": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kexue": __version__,
        "torch": torch_version,
        "python": platform.python_version(),
        "mode": mode,
        "seed": seed,
        "claims": str(len(outcomes)),
        "verdicts": ", ".join(f"{v} {n}" for v, n in sorted(counts.items())) or "none",
        "total runtime": f"{sum(o.runtime for o in outcomes):.1f} s",
    }


def write_report(outcomes: Sequence[Outcome], out: Path) -> tuple[Path, Path]:
    """Write ``out/index.html`` and ``out/report.md``; returns their paths."""
    out = Path(out)
    meta = report_meta(outcomes)
    html_path, md_path = out / "index.html", out / "report.md"
    atomic_write(html_path, render_html(outcomes, meta))
    atomic_write(md_path, render_markdown(outcomes, out, meta))
    return html_path, md_path

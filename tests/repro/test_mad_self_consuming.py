"""Quick-mode reproduction of mad-self-consuming: closed-form moments, loops, fresh-data U-shape."""

from __future__ import annotations

from pathlib import Path

from kexue.repro import mad_self_consuming
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalogue() -> None:
    post = BY_SLUG["mad-self-consuming"]
    claim = mad_self_consuming.CLAIM
    assert (claim.slug, claim.url, claim.date) == (post.slug, post.url, post.date)


def test_quick_mode_reproduces_and_is_seeded(tmp_path: Path) -> None:
    result = mad_self_consuming.run("quick", 0, tmp_path / "a")
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["w2_full_lam1.0_gen50"] > 10 * m["w2_fresh_lam1.0_gen50"]
    assert m["trace_cov_full_lam0.8_gen50"] < 1e-3
    assert m["fresh_w2_lam0.95_nsynth100"] < m["fresh_w2_lam0.95_nsynth0"] < m["fresh_w2_lam0.95_nsynth500"]
    assert abs(m["E_var_lam0.9_mc"] / m["E_var_lam0.9_theory"] - 1) < 0.15
    assert len(result.figures) == 2
    again = mad_self_consuming.run("quick", 0, tmp_path / "b")
    assert again.metrics == result.metrics

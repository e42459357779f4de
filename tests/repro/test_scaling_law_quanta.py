"""Quick-mode reproduction of scaling-law-quanta: exponents, Monte Carlo, the power-law fitter."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexue.repro import scaling_law_quanta
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalogue() -> None:
    post = BY_SLUG["scaling-law-quanta"]
    claim = scaling_law_quanta.CLAIM
    assert (claim.slug, claim.url, claim.date) == (post.slug, post.url, post.date)


def test_quick_mode_reproduces(tmp_path: Path) -> None:
    result = scaling_law_quanta.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["slope_params_gamma0.4"] == pytest.approx(-0.4, abs=0.005)
    assert m["slope_data_gamma0.4_tau5"] == pytest.approx(-0.4 / 1.4, abs=0.005)
    assert m["mc_slope"] == pytest.approx(-0.4 / 1.4, abs=0.02)
    assert m["fit_alpha"] == pytest.approx(0.35, abs=0.03) and m["fit_E"] == pytest.approx(1.5, abs=0.05)
    assert m["hard_fail_rate_ours"] <= m["hard_fail_rate_curve_fit"]
    assert len(result.figures) == 3

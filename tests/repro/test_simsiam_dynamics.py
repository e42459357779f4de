"""Quick-mode reproduction of simsiam-dynamics: the toy flow and stop-gradient vs collapse on digits."""

from __future__ import annotations

from pathlib import Path

import pytest

from kexue.repro import simsiam_dynamics
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalogue() -> None:
    post = BY_SLUG["simsiam-dynamics"]
    claim = simsiam_dynamics.CLAIM
    assert (claim.slug, claim.url, claim.date) == (post.slug, post.url, post.date)


def test_quick_mode_reproduces(tmp_path: Path) -> None:
    result = simsiam_dynamics.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["toy_stop_gradient_theta_t200"] == pytest.approx(0.80623, abs=1e-3)
    assert m["toy_no_stop_gradient_phi_t200"] == pytest.approx(0.61270, abs=1e-3)
    assert m["no_stop_gradient_std"] < 0.25 * m["simsiam_std"]
    assert m["no_stop_gradient_loss"] < -0.95
    assert m["simsiam_probe"] >= m["random_init_probe"] + 0.02
    assert len(result.figures) == 2

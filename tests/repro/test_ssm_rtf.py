"""Quick-mode reproduction of ssm-rtf: exactness, state-free kernel cost, delay task."""

from __future__ import annotations

from pathlib import Path

from kexue.repro import ssm_rtf
from kexue.repro.catalog import BY_SLUG


def test_claim_matches_catalogue() -> None:
    post = BY_SLUG["ssm-rtf"]
    assert (ssm_rtf.CLAIM.slug, ssm_rtf.CLAIM.url, ssm_rtf.CLAIM.date) == (post.slug, post.url, post.date)


def test_quick_mode_reproduces(tmp_path: Path) -> None:
    result = ssm_rtf.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    assert m["kernel_err_post"] < 1e-10 and m["kernel_err_paper"] < 1e-10
    assert m["output_err_post"] < 1e-10 and m["output_err_paper"] < 1e-10
    assert m["rtf_time_ratio_dmax_dmin"] < 2.0 < 10.0 < m["s4d_time_ratio_dmax_dmin"]
    assert m["delay_mse_d128"] < 0.01 and m["delay_mse_d32"] > 0.5
    assert len(result.figures) == 2 and all(p.is_file() and p.parent == tmp_path for p in result.figures)

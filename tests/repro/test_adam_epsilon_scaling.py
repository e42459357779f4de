import pytest

from kexue.repro import adam_epsilon_scaling
from kexue.repro.catalog import BY_SLUG


def test_quick_mode_reproduces(tmp_path):
    post = BY_SLUG[adam_epsilon_scaling.CLAIM.slug]
    assert (adam_epsilon_scaling.CLAIM.url, adam_epsilon_scaling.CLAIM.date) == (post.url, post.date)
    result = adam_epsilon_scaling.run("quick", 0, tmp_path)
    assert result.verdict == "reproduced", [c for c in result.checks if not c.passed]
    m = result.metrics
    # the spec's trial numbers for seed 0
    assert m["sgd_eta_max"] == pytest.approx(0.0984, rel=2e-3)
    assert m["sgd_B_noise"] == pytest.approx(8.69, rel=2e-3)
    assert m["sign_beta_noise"] == pytest.approx(0.318, rel=2e-3)
    assert m["B_peak_eps0"] == 16
    assert result.figures and result.figures[0].is_file()

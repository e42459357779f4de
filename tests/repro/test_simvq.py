"""Quick-mode reproduction of the SimVQ post (kexue.fm/archives/10519)."""

import pytest

from kexue.repro import simvq
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return simvq.run("quick", 0, tmp_path_factory.mktemp("simvq"))


def test_claim_matches_catalogue():
    post = BY_SLUG[simvq.CLAIM.slug]
    assert (simvq.CLAIM.url, simvq.CLAIM.date, simvq.CLAIM.title) == (post.url, post.date, post.title)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert len(result.figures) == 2 and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["simvq_utilisation_main"] > 0.5
    assert m["simvq_utilisation_main"] > 20 * m["vq_utilisation_main"]
    assert m["simvq_mse_main"] < 0.6 * m["vq_mse_main"]
    assert m["one_step_rows_moved_plain"] == 1 and m["one_step_rows_moved_simvq"] == 1024

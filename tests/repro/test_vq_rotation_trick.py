"""Quick-mode reproduction of the rotation-trick post (kexue.fm/archives/10489)."""

import pytest

from kexue.repro import vq_rotation_trick as rt
from kexue.repro.catalog import BY_SLUG


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    return rt.run("quick", 0, tmp_path_factory.mktemp("rot"))


def test_claim_matches_catalogue():
    post = BY_SLUG[rt.CLAIM.slug]
    assert (rt.CLAIM.url, rt.CLAIM.date, rt.CLAIM.title) == (post.url, post.date, post.title)


def test_quick_mode_reproduces(result):
    failed = [c.name for c in result.checks if not c.passed]
    assert result.verdict == "reproduced", failed
    assert len(result.figures) == 2 and all(p.is_file() for p in result.figures)


def test_key_numbers(result):
    m = result.metrics
    assert m["rotation_utilisation_main"] > 1.6 * m["ste_utilisation_main"]
    assert m["rotation_perplexity_main"] > 1.4 * m["ste_perplexity_main"]
    assert m["rotation_mse_main"] < m["ste_mse_main"]


def test_himmelblau_toy_is_seeded_and_lowers_the_objective():
    d1, f1, p1 = rt.himmelblau_toy("rotation", 0, steps=20)
    d2, f2, p2 = rt.himmelblau_toy("rotation", 0, steps=20)
    assert (d1, f1) == (d2, f2) and bool((p1 == p2).all())
    _, f0, _ = rt.himmelblau_toy("rotation", 0, steps=0)
    assert f1 < f0

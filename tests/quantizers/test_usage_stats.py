import math

import pytest
import torch

from kexue.quantizers import code_counts, code_usage, usage_from_counts


def test_uniform_indices_give_full_utilisation_and_perplexity_k():
    k = 64
    stats = code_usage(torch.arange(k).repeat(5), k)
    assert stats.utilisation == 1.0 and stats.dead_codes == 0 and stats.n_tokens == 5 * k
    assert math.isclose(stats.perplexity, k, rel_tol=1e-12)
    assert math.isclose(stats.normalised_perplexity, 1.0, rel_tol=1e-12)


def test_single_repeated_index_gives_one_over_k_and_perplexity_one():
    stats = code_usage(torch.full((2, 3, 7), 5), 100)
    assert stats.utilisation == 1 / 100 and stats.used_codes == 1 and stats.dead_codes == 99
    assert stats.perplexity == 1.0


def test_perplexity_of_a_known_distribution():
    counts = torch.tensor([2.0, 1.0, 1.0, 0.0])
    stats = usage_from_counts(counts)
    # entropy of (1/2, 1/4, 1/4) is 1.5 bits -> perplexity 2 ** 1.5
    assert math.isclose(stats.perplexity, 2**1.5, rel_tol=1e-12)
    assert stats.as_dict()["dead_codes"] == 1.0
    assert usage_from_counts(torch.zeros(3)).perplexity == 0.0


def test_bad_input():
    with pytest.raises(TypeError, match="integer"):
        code_usage(torch.tensor([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        code_usage(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="codebook_size"):
        code_counts(torch.tensor([0]), 0)
    with pytest.raises(ValueError, match="non-negative"):
        usage_from_counts(torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="1-D"):
        usage_from_counts(torch.ones(2, 2))

import math

import pytest
import torch

from kexue.quantizers import APPENDIX_LEVELS, FSQ, RECOMMENDED_LEVELS, recommended_levels

LEVEL_SETS = [(8, 5, 5, 5), (8, 6, 5), (7, 5, 5, 5, 5), (3,), (4,), (5, 3)]


@pytest.mark.parametrize("levels", LEVEL_SETS)
@pytest.mark.parametrize("bound", ["tanh", "sigmoid"])
def test_outputs_lie_on_the_grid_with_exactly_L_levels(levels, bound):
    fsq = FSQ(levels, bound=bound)
    z = torch.linspace(-10, 10, 4001, dtype=torch.float64)[:, None].repeat(1, len(levels))
    codes, idx = fsq(z)
    for i, L in enumerate(levels):
        vals = codes[:, i]
        if bound == "tanh":
            k = vals * (L // 2)
            expected = set(range(-(L // 2), L - L // 2))  # odd: symmetric; even: one extra negative level
        else:
            k = (vals + 1) * (L - 1) / 2
            expected = set(range(L))
        assert torch.allclose(k, k.round(), atol=1e-9)
        assert set(k.round().long().tolist()) == expected
    assert idx.dtype == torch.int64 and int(idx.min()) >= 0 and int(idx.max()) < math.prod(levels)


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (4, 7, 6)])
def test_tanh_gradient_is_straight_through_of_the_bound(levels):
    fsq = FSQ(levels)
    z = (torch.randn(64, len(levels), dtype=torch.float64) * 2).requires_grad_(True)
    codes, _ = fsq(z)
    g = torch.randn_like(codes)
    (grad,) = torch.autograd.grad((codes * g).sum(), z)
    L = torch.tensor(levels, dtype=torch.float64)
    h = (L - 1) * (1 - 1e-3) / 2
    offset = torch.where(L % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / h)
    closed = h * (1 - torch.tanh(z.detach() + shift) ** 2) / torch.floor(L / 2)
    torch.testing.assert_close(grad, g * closed, rtol=1e-6, atol=1e-9)


def test_sigmoid_gradient_is_straight_through_of_the_bound():
    fsq = FSQ((5, 2, 8), bound="sigmoid")
    z = (torch.randn(32, 3, dtype=torch.float64) * 2).requires_grad_(True)
    codes, _ = fsq(z)
    (grad,) = torch.autograd.grad(codes.sum(), z)
    s = torch.sigmoid(z.detach())
    torch.testing.assert_close(grad, 2 * s * (1 - s))


@pytest.mark.parametrize("levels", [(8, 5, 5, 5), (8, 6, 5), (8, 8, 8, 5, 5, 5), (2, 3, 4)])
def test_index_code_bijection_over_the_full_grid(levels):
    bound = "sigmoid" if 2 in levels else "tanh"
    fsq = FSQ(levels, bound=bound)
    assert fsq.codebook_size == math.prod(levels)
    book = fsq.implicit_codebook
    assert book.shape == (math.prod(levels), len(levels))
    idx = fsq.codes_to_indices(book)
    assert torch.equal(idx, torch.arange(fsq.codebook_size))
    assert torch.equal(fsq.indices_to_codes(idx), book)
    assert len({tuple(r) for r in book.tolist()}) == fsq.codebook_size
    # quantising the grid codes' pre-images reproduces them: forward(indices) agree with codes_to_indices
    level_idx = fsq.indices_to_level_indices(idx)
    assert torch.equal(
        level_idx[1], torch.tensor([1] + [0] * (len(levels) - 1))
    )  # first channel least significant


def test_zero_maps_to_zero_and_extremes_to_end_levels():
    for levels in [(8, 5, 4, 7, 6)]:
        fsq = FSQ(levels)
        zero = torch.zeros(1, len(levels), dtype=torch.float64)
        torch.testing.assert_close(fsq.bounded(zero), torch.zeros_like(zero), atol=1e-6, rtol=0)
        assert torch.equal(fsq(zero)[0], torch.zeros_like(zero))
        big = torch.full((2, len(levels)), 1e6)
        big[1] = -1e6
        codes, idx = fsq(big)
        L = torch.tensor(levels)
        top = (L - 1 - L // 2).float() / (L // 2)
        torch.testing.assert_close(codes[0], top)
        torch.testing.assert_close(codes[1], -torch.ones(len(levels)))
        assert int(idx[0]) == fsq.codebook_size - 1 and int(idx[1]) == 0


def test_recommended_levels_table():
    assert recommended_levels(2**8) == (8, 6, 5)
    assert recommended_levels(2**10) == (8, 5, 5, 5)
    assert recommended_levels(2**12) == (7, 5, 5, 5, 5)
    assert recommended_levels(2**14) == (8, 8, 8, 6, 5)
    assert recommended_levels(2**16) == (8, 8, 8, 5, 5, 5)
    assert [math.prod(v) for v in RECOMMENDED_LEVELS.values()] == [240, 1000, 4375, 15360, 64000]
    assert all(min(v) >= 5 for v in RECOMMENDED_LEVELS.values())
    assert recommended_levels(2**11, include_appendix=True) == APPENDIX_LEVELS[2**11] == (8, 8, 6, 5)
    with pytest.raises(ValueError, match="no recommended levels"):
        recommended_levels(2**11)
    with pytest.raises(TypeError):
        recommended_levels(1024.0)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="must not be empty"):
        FSQ([])
    with pytest.raises(ValueError, match=">= 2"):
        FSQ([5, 1])
    with pytest.raises(ValueError, match="degenerate"):
        FSQ([5, 2])
    with pytest.raises(TypeError, match="int"):
        FSQ([5.0, 5])
    with pytest.raises(TypeError, match="sequence"):
        FSQ(5)
    with pytest.raises(ValueError, match="bound"):
        FSQ([5, 5], bound="relu")
    fsq = FSQ([8, 5, 5, 5])
    with pytest.raises(ValueError, match="last dimension 4"):
        fsq(torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        fsq(torch.ones(3, 4, dtype=torch.int64))
    z = torch.randn(3, 4)
    z[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fsq(z)
    with pytest.raises(ValueError, match="not on the FSQ grid"):
        fsq.codes_to_indices(torch.full((1, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1000\)"):
        fsq.indices_to_codes(torch.tensor([1000]))
    with pytest.raises(TypeError, match="integer"):
        fsq.indices_to_codes(torch.tensor([1.0]))


def test_shapes_projection_and_channel_first():
    torch.manual_seed(0)
    fsq = FSQ([8, 5, 5, 5], dim=32)
    assert fsq.has_projections
    x2 = torch.randn(6, 32)
    out, idx = fsq(x2)
    assert out.shape == (6, 32) and idx.shape == (6,)
    x3 = torch.randn(2, 7, 32)
    out, idx = fsq(x3)
    assert out.shape == (2, 7, 32) and idx.shape == (2, 7)
    img = torch.randn(2, 32, 5, 3)
    out, idx = fsq(img)
    assert out.shape == (2, 32, 5, 3) and idx.shape == (2, 5, 3)
    out_last, idx_last = fsq(img.permute(0, 2, 3, 1).reshape(2, 15, 32))
    torch.testing.assert_close(out, out_last.reshape(2, 5, 3, 32).permute(0, 3, 1, 2))
    assert torch.equal(idx, idx_last.reshape(2, 5, 3))
    torch.testing.assert_close(fsq.indices_to_output(idx), out)
    # explicit channel_first on 3-D input (b, d, n)
    cf = FSQ([8, 5, 5, 5], channel_first=True)
    out, idx = cf(torch.randn(2, 4, 9))
    assert out.shape == (2, 4, 9) and idx.shape == (2, 9)


def test_seeded_projections_are_deterministic():
    torch.manual_seed(3)
    a = FSQ([8, 5, 5, 5], dim=16)
    torch.manual_seed(3)
    b = FSQ([8, 5, 5, 5], dim=16)
    x = torch.randn(10, 16)
    assert torch.equal(a(x)[0], b(x)[0]) and torch.equal(a(x)[1], b(x)[1])


def test_low_precision_inputs_get_exact_indices():
    fsq = FSQ([8, 8, 8, 5, 5, 5])
    z = (torch.randn(4096, 6) * 2).to(torch.bfloat16)
    out, idx = fsq(z)
    ref_out, ref_idx = fsq(z.float())
    assert out.dtype == torch.bfloat16
    assert torch.equal(idx, ref_idx)
    assert torch.equal(fsq.codes_to_indices(ref_out), ref_idx)
    # casting the module keeps its constants exact (they derive from the integer levels)
    big = FSQ([7, 7, 7, 7, 7]).half()
    z = torch.randn(2048, 5) * 2
    assert torch.equal(big(z.half())[1], FSQ([7, 7, 7, 7, 7])(z.half().float())[1])
    assert torch.equal(big.implicit_codebook, FSQ([7, 7, 7, 7, 7]).implicit_codebook)


def test_indices_are_int64_beyond_int32():
    fsq = FSQ([8] * 11, track_usage=False)
    assert fsq.codebook_size == 8**11 > 2**31
    _, idx = fsq(torch.full((1, 11), 1e6))
    assert idx.dtype == torch.int64 and int(idx) == 8**11 - 1
    with pytest.raises(ValueError, match="track_usage"):
        FSQ([8] * 11)


def test_usage_is_tracked_in_training_only():
    fsq = FSQ([5, 5])
    z = torch.randn(500, 2) * 3
    fsq.eval()
    fsq(z)
    assert fsq.usage().n_tokens == 0
    fsq.train()
    _, idx = fsq(z)
    stats = fsq.usage(reset=True)
    assert stats.n_tokens == 500 and stats.used_codes == len(set(idx.tolist()))
    assert fsq.usage().n_tokens == 0


@pytest.mark.parametrize("bound", ["tanh", "sigmoid"])
def test_bounded_map_passes_gradcheck(bound):
    fsq = FSQ((8, 5, 4, 3), bound=bound)
    z = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fsq.bounded, (z,))

"""RTF: FFT kernel vs explicit recurrence, convolution vs step-by-step inference, invariants, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexue.nn.rtf import (
    RTF,
    RTFSequenceModel,
    companion_matrix,
    denominator_min_modulus,
    recurrent_readout,
    rtf_coefficients_from_ssm,
    rtf_kernel,
    rtf_kernel_recurrent,
    rtf_recurrent_scan,
    rtf_step,
    s4d_init,
    s4d_vandermonde_kernel,
    ssm_param_groups,
)

F64 = torch.float64


def _stable(
    h: int, d: int, l1: float = 0.95, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(h, d, generator=g, dtype=F64)
    a = l1 * a / a.abs().sum(-1, keepdim=True)
    return a, torch.randn(h, d, generator=g, dtype=F64), torch.randn(h, generator=g, dtype=F64)


def _layer(h: int, d: int, convention: str, seed: int = 0, **kw) -> RTF:
    a, b, h0 = _stable(h, d, seed=seed)
    layer = RTF(h, d, convention=convention, dtype=F64, **kw)
    with torch.no_grad():
        layer.a.copy_(a[: layer.num_a].unsqueeze(0).expand_as(layer.a))
        layer.b.copy_(b.unsqueeze(0).expand_as(layer.b))
        layer.h0.copy_(h0)
    return layer


@pytest.mark.parametrize("convention", ["post", "paper"])
@pytest.mark.parametrize(("d", "length"), [(16, 128), (1, 7), (5, 33), (31, 32)])
def test_fft_kernel_equals_recurrence_kernel(convention: str, d: int, length: int) -> None:
    a, b, h0 = _stable(3, d, seed=d)
    k_fft = rtf_kernel(a, b, length, h0, convention=convention)
    k_rec = rtf_kernel_recurrent(a, b, length, h0, convention=convention)
    assert k_fft.shape == (3, length)
    torch.testing.assert_close(k_fft, k_rec, rtol=0, atol=1e-10)


def test_post_kernel_is_truncated_impulse_response_of_corrected_companion_ssm() -> None:
    a, b, _ = _stable(2, 6)
    length = 40
    A = companion_matrix(a)
    c = recurrent_readout(a, b, length)
    explicit = torch.stack(
        [
            torch.stack([c[i] @ torch.linalg.matrix_power(A[i], k)[:, 0] for k in range(length)])
            for i in range(2)
        ]
    )
    torch.testing.assert_close(rtf_kernel(a, b, length), explicit, rtol=0, atol=1e-12)


def test_paper_kernel_is_h0_then_delayed_post_kernel() -> None:
    a, b, h0 = _stable(4, 8)
    k = rtf_kernel(a, b, 64, h0, convention="paper")
    g = rtf_kernel(a, b, 64)
    assert torch.equal(k[:, 0], h0)
    assert torch.equal(k[:, 1:], g[:, :63])


def test_uncorrected_readout_is_wrong() -> None:
    a, b, _ = _stable(1, 8, l1=0.99)
    length = 32
    impulse = torch.zeros(1, length, dtype=F64)
    impulse[0, 0] = 1.0
    # using b as the read-out (no (I - A^L) correction) misses the folded tail
    A = companion_matrix(a[0])
    naive = torch.stack([b[0] @ torch.linalg.matrix_power(A, k)[:, 0] for k in range(length)])
    assert (naive - rtf_kernel(a, b, length)[0]).abs().max() > 1e-4
    exact = rtf_recurrent_scan(impulse, a, b)
    torch.testing.assert_close(exact, rtf_kernel(a, b, length), rtol=0, atol=1e-12)


@pytest.mark.parametrize("convention", ["post", "paper"])
@pytest.mark.parametrize("extra", [{}, {"num_a": 2}, {"constraint": "l1_montel"}])
def test_recurrent_inference_equals_convolution(convention: str, extra: dict) -> None:
    layer = _layer(4, 16, convention, **extra)
    u = torch.randn(3, 128, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y_conv = layer(u)
        y_rec = layer.recurrent_forward(u)
    assert y_conv.shape == (3, 128, 4)
    torch.testing.assert_close(y_conv, y_rec, rtol=0, atol=1e-10)


def test_step_api_generates_token_by_token() -> None:
    layer = _layer(2, 4, "paper")
    u = torch.randn(1, 20, 2, dtype=F64)
    readout = layer.step_readout(20)
    state = layer.init_state(1).to(F64)
    ys = []
    for t in range(20):
        y, state = layer.step(u[:, t], state, readout)
        ys.append(y)
    with torch.no_grad():
        torch.testing.assert_close(torch.stack(ys, 1), layer(u), rtol=0, atol=1e-12)


def test_dense_ssm_maps_to_rtf_and_is_coordinate_invariant() -> None:
    rng = np.random.default_rng(0)
    d, length = 10, 48
    A = rng.standard_normal((d, d))
    A *= 0.9 / np.abs(np.linalg.eigvals(A)).max()
    B, C = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rtf_coefficients_from_ssm(A, B, C, length)
    assert a.shape == b.shape == (d,)
    k_dense = np.array([C @ np.linalg.matrix_power(A, k) @ B for k in range(length)])
    k_rtf = rtf_kernel(torch.from_numpy(a), torch.from_numpy(b), length).numpy()
    np.testing.assert_allclose(k_rtf, k_dense, rtol=0, atol=1e-10 * np.abs(k_dense).max())
    T = rng.standard_normal((d, d)) + 3 * np.eye(d)
    a2, b2 = rtf_coefficients_from_ssm(T @ A @ np.linalg.inv(T), T @ B, np.linalg.inv(T).T @ C, length)
    np.testing.assert_allclose(a2, a, atol=1e-9)
    np.testing.assert_allclose(b2, b, atol=1e-9)


def test_companion_characteristic_polynomial() -> None:
    a = torch.tensor([0.3, -0.2, 0.1, 0.05], dtype=F64)
    poly = np.poly(companion_matrix(a).numpy())
    np.testing.assert_allclose(poly, np.r_[1.0, a.numpy()], atol=1e-12)


def test_zero_a_is_fir_filter_and_shift_register() -> None:
    b = torch.randn(3, 6, dtype=F64)
    k = rtf_kernel(torch.zeros_like(b), b, 20)
    torch.testing.assert_close(k[:, :6], b, rtol=0, atol=1e-14)
    assert k[:, 6:].abs().max() < 1e-14
    u = torch.randn(25, dtype=F64)
    state = torch.zeros(6, dtype=F64)
    zero = torch.zeros(6, dtype=F64)
    for t in range(25):
        _, state = rtf_step(state, u[t], zero, zero)
    assert torch.equal(state, u[-6:].flip(0))


def test_zero_init_layer_is_pure_skip() -> None:
    torch.manual_seed(0)
    layer = RTF(3, 4)
    u = torch.randn(2, 10, 3)
    torch.testing.assert_close(layer(u), u * layer.h0)
    layer(u).sum().backward()
    assert layer.b.grad is not None and layer.b.grad.abs().sum() > 0


@pytest.mark.parametrize("convention", ["post", "paper"])
def test_causality(convention: str) -> None:
    layer = _layer(2, 5, convention)
    u = torch.randn(1, 30, 2, dtype=F64)
    u2 = u.clone()
    u2[0, 17] += 1.0
    with torch.no_grad():
        y, y2 = layer(u), layer(u2)
    assert torch.equal(y[:, :17], y2[:, :17]) or (y[:, :17] - y2[:, :17]).abs().max() < 1e-14
    assert (y[:, 17:] - y2[:, 17:]).abs().max() > 1e-3


def test_bidirectional_sees_the_future_and_has_no_recurrence() -> None:
    torch.manual_seed(0)
    layer = RTF(2, 4, bidirectional=True, init="montel", dtype=F64)
    u = torch.randn(1, 16, 2, dtype=F64)
    u2 = u.clone()
    u2[0, 10] += 1.0
    with torch.no_grad():
        assert (layer(u)[:, :10] - layer(u2)[:, :10]).abs().max() > 1e-6
    with pytest.raises(ValueError, match="bidirectional"):
        layer.step_readout(16)


def test_gradcheck_kernel_and_layer() -> None:
    a, b, h0 = _stable(2, 8, l1=0.8)
    args = tuple(t.clone().requires_grad_() for t in (a, b, h0))
    assert torch.autograd.gradcheck(lambda x, y, z: rtf_kernel(x, y, 32, z, convention="paper"), args)
    layer = _layer(2, 4, "post", constraint="l1_montel")
    u = torch.randn(2, 12, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (u,))
    params = (layer.a, layer.b, layer.h0, layer.s)
    assert torch.autograd.gradcheck(
        lambda *p: torch.func.functional_call(layer, dict(zip(("a", "b", "h0", "s"), p)), (u.detach(),)),
        params,
    )


def test_montel_bound_keeps_poles_inside_unit_circle() -> None:
    g = torch.Generator().manual_seed(3)
    for _ in range(20):
        a = torch.randn(12, generator=g, dtype=F64)
        a = 0.999 * a / a.abs().sum()
        roots = np.roots(np.r_[1.0, a.numpy()])
        assert np.abs(roots).max() < 1.0
    layer = RTF(4, 8, init="xavier", constraint="l1_montel", dtype=F64)
    with torch.no_grad():
        layer.a.mul_(100.0)
        a_eff, _ = layer.coefficients()
    assert (a_eff.abs().sum(-1) < 1).all()
    eig = torch.linalg.eigvals(companion_matrix(a_eff[0])).abs()
    assert eig.max() < 1.0


def test_kernel_recomputed_for_each_length() -> None:
    layer = _layer(2, 4, "paper")
    for length in (5, 9, 64):
        assert layer(torch.randn(1, length, 2, dtype=F64)).shape == (1, length, 2)
        assert layer.kernel(length).shape == (2, length)


def test_kernel_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    layer = RTF(3, 4, init="montel", dropout=0.5)
    u = torch.randn(2, 16, 3)
    layer.eval()
    assert torch.equal(layer(u), layer(u))
    layer.train()
    assert not torch.equal(layer(u), layer(u))


def test_sequence_model_shapes_and_identity_baseline() -> None:
    torch.manual_seed(0)
    model = RTFSequenceModel(1, 8, 10, state_size=4)
    x = torch.randn(5, 20, 1)
    assert model(x).shape == (5, 10)
    per_step = RTFSequenceModel(1, 8, 3, state_size=4, pool="none")
    assert per_step(x).shape == (5, 20, 3)
    ident = RTFSequenceModel(1, 8, 10, mixer="identity")
    x2 = x.clone()
    x2[:, :10] = x2[:, :10].flip(1)  # permuting time does not change a mean-pooled position-wise net
    torch.testing.assert_close(ident(x), ident(x2))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_s4d_kernel_matches_diagonal_recurrence() -> None:
    g = torch.Generator().manual_seed(0)
    log_dt, A, C = s4d_init(2, 8, generator=g, dtype=F64)
    k = s4d_vandermonde_kernel(log_dt, A, C, 20)
    dtA = A * log_dt.exp()[:, None]
    abar, bbar = torch.exp(dtA), (torch.exp(dtA) - 1) / A
    state = bbar.clone()
    ref = []
    for _ in range(20):
        ref.append(2 * (C * state).sum(-1).real)
        state = abar * state
    torch.testing.assert_close(k, torch.stack(ref, -1), rtol=1e-10, atol=1e-12)


def test_unstable_system_warns_in_recurrent_mode() -> None:
    a = torch.tensor([[-2.5, 1.0]], dtype=F64)  # roots 2 and 0.5
    with pytest.warns(RuntimeWarning, match="unstable"):
        recurrent_readout(a, torch.ones_like(a), 16)


def test_pole_on_unit_circle_is_an_error() -> None:
    a = torch.tensor([[1.0]], dtype=F64)  # 1 + z vanishes at z = -1, a root of unity for even L
    assert denominator_min_modulus(a, 8) < 1e-12
    with pytest.raises(ValueError, match="unit circle"):
        rtf_kernel(a, torch.ones_like(a), 8)


def test_bad_input() -> None:
    a, b, _ = _stable(2, 4)
    with pytest.raises(ValueError, match="state_size must be >= 1"):
        RTF(4, 0)
    with pytest.raises(TypeError, match="state_size must be an int"):
        RTF(4, 2.5)
    with pytest.raises(ValueError, match="greater than the state size"):
        rtf_kernel(a, b, 4)
    with pytest.raises(ValueError, match="NaN or inf"):
        rtf_kernel(torch.full_like(a, float("nan")), b, 16)
    with pytest.raises(ValueError, match="same state size"):
        rtf_kernel(a, b[:, :3], 16)
    with pytest.raises(TypeError, match="floating dtype"):
        rtf_kernel(a.long(), b, 16)
    with pytest.raises(ValueError, match="needs h0"):
        rtf_kernel(a, b, 16, convention="paper")
    with pytest.raises(ValueError, match="convention"):
        rtf_kernel(a, b, 16, convention="s4")
    layer = RTF(2, 4)
    with pytest.raises(ValueError, match="shape \\(batch, length, d_model\\)"):
        layer(torch.randn(10, 2))
    with pytest.raises(ValueError, match="channels"):
        layer(torch.randn(1, 10, 3))
    with pytest.raises(TypeError, match="floating dtype"):
        layer(torch.ones(1, 10, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="greater than the state size"):
        layer(torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="num_a"):
        RTF(6, 4, num_a=4)
    with pytest.raises(ValueError, match="init"):
        RTF(2, 4, init="orthogonal")
    with pytest.raises(ValueError, match="constraint"):
        RTF(2, 4, constraint="l2")
    with pytest.raises(ValueError, match="square"):
        rtf_coefficients_from_ssm(np.ones((2, 3)), np.ones(2), np.ones(2), 8)


def test_ssm_param_groups_split_rtf_parameters() -> None:
    model = RTFSequenceModel(1, 8, 3, state_size=4)
    rest, ssm = ssm_param_groups(model, lr=1e-3)
    rtf_params = {id(p) for m in model.mixers for p in m.parameters()}
    assert {id(p) for p in ssm["params"]} == rtf_params
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0.0
    assert len(rest["params"]) + len(ssm["params"]) == len(list(model.parameters()))
    opt = torch.optim.AdamW([rest, ssm], lr=3e-3)
    assert [g["lr"] for g in opt.param_groups] == [3e-3, 1e-3]

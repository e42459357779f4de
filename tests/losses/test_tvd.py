"""TaiLr / TVD loss: definitions, CE at gamma = 0, gradients, ignore_index, reductions, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kexue.losses import TVDLoss, gamma_schedule, tailr_loss, tvd_loss

D = torch.float64


def _data(n=7, v=5, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(n, v, generator=g)).to(dtype).requires_grad_(True)
    t = torch.randint(v, (n,), generator=g)
    return z, t


def test_hand_checked_values():
    # logits (0, log 3): p = (1/4, 3/4)
    z = torch.tensor([[0.0, math.log(3.0)]], dtype=D)
    t = torch.tensor([0])
    g = 0.5
    expected = -math.log(0.5 + 0.5 * 0.25) / 0.5  # = 2 log(8/5)
    assert tvd_loss(z, t, g).item() == pytest.approx(expected, rel=1e-14)
    assert tvd_loss(z, t, 0.0).item() == pytest.approx(math.log(4.0), rel=1e-14)
    assert tvd_loss(z, t, 1.0).item() == pytest.approx(0.75, rel=1e-14)
    # weighted form: value -w log p with w = p / (g + (1 - g) p) = 0.25 / 0.625 = 0.4
    assert tvd_loss(z, t, g, form="weighted").item() == pytest.approx(0.4 * math.log(4.0), rel=1e-14)
    assert tvd_loss(z, t, g, min_weight=0.5, form="weighted").item() == pytest.approx(0.5 * math.log(4.0))
    assert tailr_loss is tvd_loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_gamma_zero_is_cross_entropy(reduction, smoothing):
    z, t = _data()
    t[2] = -100
    t[5] = -100
    ours = tvd_loss(z, t, 0.0, label_smoothing=smoothing, reduction=reduction)
    ref = F.cross_entropy(z, t, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad(ours.sum(), z)
    (g2,) = torch.autograd.grad(ref.sum(), z)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    # ignored rows get no gradient
    assert torch.equal(g1[2], torch.zeros_like(g1[2]))


@pytest.mark.parametrize(
    "form,b,eps", [("closed", 0.0, 0.0), ("closed", 0.0, 0.2), ("weighted", 0.0, 0.0), ("weighted", 0.3, 0.1)]
)
def test_gradcheck_float64(form, b, eps):
    z, t = _data(n=4, v=3, seed=1)
    t[1] = -100
    gamma = 0.6
    if form == "closed":
        assert torch.autograd.gradcheck(
            lambda z: tvd_loss(z, t, gamma, label_smoothing=eps, reduction="none"), (z,)
        )
    else:
        # the weighted form's weight is detached: compare with an autograd reference instead of finite differences
        out = tvd_loss(z, t, gamma, min_weight=b, form=form, label_smoothing=eps, reduction="sum")
        (g,) = torch.autograd.grad(out, z)
        logp = torch.log_softmax(z, -1)
        valid = t != -100
        tt = t.clamp_min(0)
        lp = logp.gather(1, tt[:, None]).squeeze(1)
        p = lp.exp()
        w = (p / (gamma + (1 - gamma) * p)).clamp(b, 1).detach()
        ref = ((1 - eps) * (-w * lp) + eps * (-logp.mean(-1)))[valid].sum()
        (g_ref,) = torch.autograd.grad(ref, z)
        torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 0.9])
def test_gradient_is_the_weighted_ce_gradient(gamma):
    z, t = _data(seed=2)
    (g,) = torch.autograd.grad(tvd_loss(z, t, gamma, reduction="sum"), z)
    p_all = torch.softmax(z, -1)
    p = p_all.gather(1, t[:, None])
    w = p / (gamma + (1 - gamma) * p)
    torch.testing.assert_close(g, (w * (p_all - F.one_hot(t, 5))).detach(), rtol=1e-12, atol=1e-12)
    # the weighted form with b = 0 has the same gradient (different value)
    (g_w,) = torch.autograd.grad(tvd_loss(z, t, gamma, form="weighted", reduction="sum"), z)
    torch.testing.assert_close(g_w, g, rtol=1e-12, atol=1e-12)


def test_limits_bounds_and_monotonicity():
    z, t = _data(n=50, v=6, seed=3)
    p = torch.softmax(z, -1).gather(1, t[:, None]).squeeze(1).detach()
    one = tvd_loss(z, t, 1.0, reduction="none").detach()
    torch.testing.assert_close(one, 1 - p, rtol=0, atol=1e-15)
    near = tvd_loss(z, t, 1 - 1e-6, reduction="none").detach()
    assert (near - (1 - p)).abs().max() < 1e-5
    for gamma in (0.2, 0.5, 0.8):
        L = tvd_loss(z, t, gamma, reduction="none").detach()
        assert (L >= 0).all() and (L <= -math.log(gamma) / (1 - gamma) + 1e-12).all()
        order = torch.argsort(p)
        assert (L[order].diff() <= 1e-12).all()  # decreasing in p
    ce = tvd_loss(z, t, 0.0, reduction="none").detach()
    small = p < 0.1
    assert small.any() and (tvd_loss(z, t, 0.5, reduction="none").detach()[small] < ce[small]).all()


def test_shapes_ignore_and_all_ignored():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 7, generator=g, dtype=D)
    t = torch.randint(7, (2, 3), generator=g)
    t[0, 1] = -1
    flat = tvd_loss(z.reshape(6, 7), t.reshape(6), 0.3, ignore_index=-1, reduction="none")
    none = tvd_loss(z, t, 0.3, ignore_index=-1, reduction="none")
    assert none.shape == (2, 3) and none[0, 1] == 0
    torch.testing.assert_close(none.reshape(6), flat)
    torch.testing.assert_close(tvd_loss(z, t, 0.3, ignore_index=-1), flat.sum() / 5)
    zz = z.clone().requires_grad_(True)
    out = tvd_loss(zz, torch.full((2, 3), -100), 0.3)
    out.backward()
    assert out.item() == 0.0 and torch.equal(zz.grad, torch.zeros_like(zz))
    # unbatched input [V] with a 0-d target
    torch.testing.assert_close(tvd_loss(z[0, 0], t[0, 0], 0.0), F.cross_entropy(z[0, 0], t[0, 0]))


def test_large_logits_and_low_precision_are_stable():
    z = torch.tensor([[1000.0, -1000.0, 0.0]], requires_grad=True)
    t = torch.tensor([1])
    for gamma in (0.0, 0.5, 1.0):
        out = tvd_loss(z, t, gamma)
        (g,) = torch.autograd.grad(out, z)
        assert torch.isfinite(out) and torch.isfinite(g).all()
    assert tvd_loss(z, t, 0.0).item() == pytest.approx(2000.0)
    assert tvd_loss(z, t, 0.5).item() == pytest.approx(-math.log(0.5) / 0.5)  # bounded
    zb = torch.randn(4, 9).to(torch.bfloat16).requires_grad_(True)
    tb = torch.randint(9, (4,))
    out = tvd_loss(zb, tb, 0.4)
    out.backward()
    assert out.dtype == torch.bfloat16 and zb.grad.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), tvd_loss(zb.detach().float(), tb, 0.4), rtol=1e-2, atol=1e-2)


def test_module_and_schedule():
    z, t = _data(seed=5)
    mod = TVDLoss(0.4, ignore_index=3)
    torch.testing.assert_close(mod(z, t), tvd_loss(z, t, 0.4, ignore_index=3))
    mod.gamma = gamma_schedule(50, 100, 0.0, 0.8)
    assert mod.gamma == pytest.approx(0.4)
    assert gamma_schedule(0, 10, 0.0, 0.8, "cosine") == 0.0
    assert gamma_schedule(10, 10, 0.0, 0.8, "cosine") == pytest.approx(0.8)
    assert gamma_schedule(20, 10) == pytest.approx(0.8)


def test_errors():
    z, t = _data()
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\]"):
        tvd_loss(z, t, 1.5)
    with pytest.raises(ValueError, match=r"min_weight must be in \[0, 1\]"):
        tvd_loss(z, t, 0.5, min_weight=-0.1, form="weighted")
    with pytest.raises(ValueError, match="only applies to form='weighted'"):
        tvd_loss(z, t, 0.5, min_weight=0.2)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\]"):
        tvd_loss(z, torch.full((7,), 5), 0.5)
    with pytest.raises(TypeError, match="integer class indices"):
        tvd_loss(z, t.double(), 0.5)
    with pytest.raises(TypeError, match="floating-point"):
        tvd_loss(z.long(), t, 0.5)
    with pytest.raises(ValueError, match=r"target shape \(6,\) must equal logits shape \(7, 5\)"):
        tvd_loss(z, t[:6], 0.5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        tvd_loss(z, t, 0.5, reduction="avg")
    with pytest.raises(ValueError, match="form must be"):
        tvd_loss(z, t, 0.5, form="open")

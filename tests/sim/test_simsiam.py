"""SimSiam pieces: loss invariants, stop-gradient gradients, collapse metric, the toy flow, seeded training."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from kexue.sim.simsiam import (
    SimSiamConfig,
    SimSiamNet,
    augment_digits,
    ema_update,
    integrate_toy,
    negative_cosine,
    simsiam_loss,
    std_of_l2_normalized,
    toy_conserved,
    toy_limits,
    train_simsiam,
)


def test_negative_cosine_bounds_and_symmetry() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g)
    assert negative_cosine(3.0 * z, z).item() == pytest.approx(-1.0, abs=1e-6)
    assert negative_cosine(-z, z).item() == pytest.approx(1.0, abs=1e-6)
    p1, p2, z1, z2 = (torch.randn(8, 5, generator=g) for _ in range(4))
    loss = simsiam_loss(p1, p2, z1, z2)
    assert -1.0 <= loss.item() <= 1.0
    assert simsiam_loss(p2, p1, z2, z1).item() == pytest.approx(loss.item(), abs=1e-7)


def _tiny() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    enc = torch.nn.Linear(4, 3)
    g = torch.Generator().manual_seed(1)
    return enc, torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)


def test_stop_gradient_blocks_the_target_branch() -> None:
    enc, x1, x2 = _tiny()
    pred = torch.nn.Linear(3, 3)
    for stop, expect_zero in ((True, True), (False, False)):
        enc.zero_grad()
        z1, z2 = enc(x1), enc(x2)
        # predictions from detached inputs: any encoder gradient must come through the target branch
        p1, p2 = pred(z1.detach()), pred(z2.detach())
        simsiam_loss(p1, p2, z1, z2, stop_gradient=stop).backward()
        grad = enc.weight.grad
        assert (grad is None or grad.abs().max().item() == 0.0) == expect_zero


def test_no_predictor_stop_gradient_is_half_the_full_gradient() -> None:
    enc, x1, x2 = _tiny()
    grads = []
    for stop in (True, False):
        enc.zero_grad()
        z1, z2 = enc(x1), enc(x2)
        simsiam_loss(z1, z2, z1, z2, stop_gradient=stop).backward()
        grads.append(enc.weight.grad.clone())
    torch.testing.assert_close(grads[0], 0.5 * grads[1])


def test_collapse_metric() -> None:
    assert std_of_l2_normalized(torch.ones(50, 8) * torch.randn(1, 8)) == pytest.approx(0.0, abs=1e-12)
    z = torch.randn(10_000, 64, generator=torch.Generator().manual_seed(0))
    assert std_of_l2_normalized(z) == pytest.approx(1 / math.sqrt(64), rel=0.1)
    zn = torch.nn.functional.normalize(z, dim=1)
    assert std_of_l2_normalized(z) == pytest.approx(zn.std(0).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="2-D"):
        std_of_l2_normalized(torch.randn(4, 4, 4))


@pytest.mark.parametrize("variant", ["stop_gradient", "no_stop_gradient", "extra_term_only"])
def test_toy_flow_conserves_and_reaches_closed_form_limit(variant: str) -> None:
    t, phi, theta = integrate_toy(variant, 0.6, 0.1, 200.0)
    c = toy_conserved(variant, phi, theta)
    assert np.abs(c - c[0]).max() < 1e-8
    phi_inf, theta_inf = toy_limits(variant, 0.6, 0.1)
    assert phi[-1] == pytest.approx(phi_inf, abs=1e-6)
    assert theta[-1] == pytest.approx(theta_inf, abs=1e-6)
    assert {"stop_gradient": 0.80623, "no_stop_gradient": 0.0, "extra_term_only": 0.0}[
        variant
    ] == pytest.approx(theta_inf, abs=1e-5)


def test_ema_tau_zero_copies_the_online_network() -> None:
    torch.manual_seed(0)
    online, target = (
        SimSiamNet(hidden=16, out_dim=8, pred_hidden=4),
        SimSiamNet(hidden=16, out_dim=8, pred_hidden=4),
    )
    ema_update(target, online, 0.0)
    for pt, po in zip(target.state_dict().values(), online.state_dict().values()):
        assert torch.equal(pt, po)
    with pytest.raises(ValueError, match="tau"):
        ema_update(target, online, 1.5)


def test_augmentation_is_seeded_and_shaped() -> None:
    x = torch.rand(5, 1, 8, 8)
    v1 = augment_digits(x, torch.Generator().manual_seed(0))
    v2 = augment_digits(x, torch.Generator().manual_seed(0))
    assert v1.shape == (5, 64) and torch.equal(v1, v2)
    clean = augment_digits(x, torch.Generator().manual_seed(0), drop=0.0, noise=0.0)
    # a shift by at most one pixel: every view pixel is 0 (padding) or some original pixel
    assert all(
        bool(torch.isin(clean[i], torch.cat([x[i].flatten(), torch.zeros(1)])).all()) for i in range(5)
    )
    with pytest.raises(ValueError, match="digits"):
        augment_digits(torch.rand(5, 10), torch.Generator())


def test_training_is_seeded_and_no_stop_gradient_lowers_the_loss_faster() -> None:
    x = torch.rand(128, 64, generator=torch.Generator().manual_seed(0))
    cfg = SimSiamConfig(steps=40, batch=32, hidden=32, out_dim=16, pred_hidden=8, lr=0.1)
    _, l1 = train_simsiam(x, cfg, seed=3)
    _, l2 = train_simsiam(x, cfg, seed=3)
    assert l1 == l2
    _, l3 = train_simsiam(x, replace(cfg, stop_gradient=False), seed=3)
    assert np.mean(l3[-10:]) < np.mean(l1[-10:])


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="ema_tau"):
        SimSiamConfig(ema_tau=1.0)
    with pytest.raises(ValueError, match="stop_gradient"):
        SimSiamConfig(ema_tau=0.9, stop_gradient=False)
    with pytest.raises(ValueError, match="flattened"):
        train_simsiam(torch.rand(10, 8, 8), SimSiamConfig())
    with pytest.raises(ValueError, match="toy variant"):
        integrate_toy("momentum")

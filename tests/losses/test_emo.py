"""EMO loss: exact transport cost, gradients, the official combinations, ignore_index, shapes, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.losses import EMOLoss, emo_distance, emo_loss

D = torch.float64


def _data(n=6, v=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = (2 * torch.randn(n, v, generator=g, dtype=D)).requires_grad_(True)
    t = torch.randint(v, (n,), generator=g)
    e = torch.randn(v, d, generator=g, dtype=D)
    return z, t, e


def _cosine_cost(e):
    u = e / e.norm(dim=1, keepdim=True)
    return 1 - u @ u.T


def _emd_lp(p, tau, C):
    """Exact earth mover's distance by linear programming (scipy)."""
    opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    V = len(p)
    A_eq = []
    for i in range(V):  # row sums = p
        row = np.zeros((V, V))
        row[i, :] = 1
        A_eq.append(row.ravel())
    for j in range(V):  # column sums = tau
        col = np.zeros((V, V))
        col[:, j] = 1
        A_eq.append(col.ravel())
    b_eq = np.concatenate([p.numpy(), tau.numpy()])
    res = opt.linprog(C.numpy().ravel(), A_eq=np.array(A_eq), b_eq=b_eq, bounds=(0, None), method="highs")
    assert res.success
    return res.fun


def test_one_hot_emo_is_the_explicit_cost_and_the_lp_optimum():
    z, t, e = _data()
    C = _cosine_cost(e)
    p = torch.softmax(z, -1).detach()
    emo = emo_distance(z, t, e, reduction="none").detach()
    explicit = (p * C[:, t].T).sum(-1)
    torch.testing.assert_close(emo, explicit, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(emo_distance(z, t, cost_matrix=C, reduction="none").detach(), explicit)
    for n in range(3):
        lp = _emd_lp(p[n], F.one_hot(t[n], 5).to(D), C)
        assert emo[n].item() == pytest.approx(lp, abs=1e-6)


def test_soft_targets_give_an_upper_bound_tight_for_one_hot():
    z, t, e = _data(seed=1)
    C = _cosine_cost(e)
    p = torch.softmax(z, -1).detach()
    g = torch.Generator().manual_seed(9)
    tau = torch.softmax(3 * torch.randn(6, 5, generator=g, dtype=D), -1)
    bound = emo_distance(z, None, e, reduction="none", target_probs=tau).detach()
    torch.testing.assert_close(bound, ((p @ C) * tau).sum(-1), rtol=1e-12, atol=1e-12)
    for n in range(3):
        assert bound[n].item() >= _emd_lp(p[n], tau[n], C) - 1e-7
    onehot = emo_distance(z, None, e, reduction="none", target_probs=F.one_hot(t, 5).to(D))
    torch.testing.assert_close(onehot, emo_distance(z, t, e, reduction="none"))


def test_identity_cost_is_one_minus_p_and_scale_invariance():
    z, t, e = _data(seed=2)
    p_t = torch.softmax(z, -1).gather(1, t[:, None]).squeeze(1)
    eye_cost = 1 - torch.eye(5, dtype=D)
    torch.testing.assert_close(emo_distance(z, t, cost_matrix=eye_cost, reduction="none"), 1 - p_t)
    # orthogonal embeddings give the same 0/1 cost
    torch.testing.assert_close(emo_distance(z, t, torch.eye(5, dtype=D), reduction="none"), 1 - p_t)
    scaled = e * torch.tensor([[1.0], [5.0], [0.1], [2.0], [7.0]], dtype=D)
    torch.testing.assert_close(emo_distance(z, t, scaled), emo_distance(z, t, e))


def test_gradient_formula_gradcheck_and_no_gradient_to_the_cost():
    z, t, e = _data(seed=3)
    t[4] = -100
    e.requires_grad_(True)
    out = emo_distance(z, t, e, reduction="sum")
    (g,) = torch.autograd.grad(out, z)
    C = _cosine_cost(e.detach())
    p = torch.softmax(z, -1).detach()
    valid = t != -100
    tt = t.clamp_min(0)
    emo = (p * C[:, tt].T).sum(-1, keepdim=True)
    ref = p * (C[:, tt].T - emo) * valid[:, None]
    torch.testing.assert_close(g, ref, rtol=1e-12, atol=1e-12)
    emo_distance(z, t, e).backward()
    assert e.grad is None
    e2 = e.detach()
    assert torch.autograd.gradcheck(lambda z: emo_loss(z, t, e2, combine="none", reduction="none"), (z,))
    C2 = torch.rand(5, 5, generator=torch.Generator().manual_seed(0), dtype=D)
    tau = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(1), dtype=D), -1)
    assert torch.autograd.gradcheck(lambda z: emo_distance(z, t, cost_matrix=C2, target_probs=tau), (z,))
    assert torch.autograd.gradcheck(lambda z: emo_distance(z, None, e2, target_probs=tau), (z,))


@pytest.mark.parametrize("combine", ["official", "official_mode1", "official_mode2"])
def test_official_combinations(combine):
    z, t, e = _data(n=8, seed=4)
    t[2] = -100
    loss = emo_loss(z, t, e, combine=combine, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), z)
    valid = t != -100
    mle = F.cross_entropy(z, t, reduction="none")
    emo = emo_distance(z, t, e, reduction="none")
    (g_mle,) = torch.autograd.grad(mle.sum(), z, retain_graph=True)
    (g_emo,) = torch.autograd.grad(emo.sum(), z, retain_graph=True)
    ratio = torch.where(valid, mle / (emo + 1e-10), torch.zeros_like(mle)).detach()
    if combine == "official":
        ref_val, ref_g = 0.5 * (mle + ratio * emo), 0.5 * g_mle + 0.5 * ratio[:, None] * g_emo
        torch.testing.assert_close(loss, mle, rtol=1e-8, atol=1e-8)  # the value is the NLL
    elif combine == "official_mode1":
        clipped = ratio.clamp(max=3.0)
        assert (ratio > 3).any() and (ratio < 3).any()
        ref_val, ref_g = 0.5 * (clipped * emo + mle), 0.5 * g_mle + 0.5 * clipped[:, None] * g_emo
    else:
        inv = torch.where(valid, emo / (mle + 1e-10), torch.zeros_like(mle)).detach()
        ref_val, ref_g = inv * mle + emo, inv[:, None] * g_mle + g_emo
    torch.testing.assert_close(loss, ref_val.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g, ref_g, rtol=1e-10, atol=1e-10)


def test_shapes_ignore_shift_and_all_ignored():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 4, 6, generator=g, dtype=D)
    t = torch.randint(6, (2, 4), generator=g)
    e = torch.randn(6, 3, generator=g, dtype=D)
    t[1, 2] = -100
    flat = emo_loss(z.reshape(8, 6), t.reshape(8), e, reduction="none")
    none = emo_loss(z, t, e, reduction="none")
    assert none.shape == (2, 4) and none[1, 2] == 0
    torch.testing.assert_close(none.reshape(8), flat)
    torch.testing.assert_close(emo_loss(z, t, e), flat.sum() / 7)
    torch.testing.assert_close(emo_loss(z, t, e, reduction="sum"), flat.sum())
    shifted = emo_loss(z, t, e, shift_for_causal_lm=True)
    torch.testing.assert_close(shifted, emo_loss(z[:, :-1], t[:, 1:], e))
    zz = z.clone().requires_grad_(True)
    out = emo_loss(zz, torch.full((2, 4), -100), e)
    out.backward()
    assert out.item() == 0.0 and torch.isfinite(zz.grad).all() and not zz.grad.any()


def test_module_owns_a_frozen_normalised_buffer():
    torch.manual_seed(6)
    head = nn.Linear(4, 7)
    crit = EMOLoss.from_lm_head(head, combine="none")
    assert "unit_embedding" in dict(crit.named_buffers()) and not list(crit.parameters())
    torch.testing.assert_close(crit.unit_embedding.norm(dim=1), torch.ones(7))
    z = torch.randn(3, 7)
    t = torch.tensor([0, 6, 2])
    torch.testing.assert_close(crit(z, t), emo_distance(z, t, head.weight.detach()))
    with torch.no_grad():
        head.weight.zero_()  # the copy does not follow later changes of the head
    torch.testing.assert_close(crit(z, t), emo_distance(z, t, crit.unit_embedding))

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(4, 7)

    assert EMOLoss.from_lm_head(LM()).unit_embedding.shape == (7, 4)


def test_low_precision_and_large_logits():
    g = torch.Generator().manual_seed(7)
    e = torch.randn(9, 4, generator=g)
    zb = torch.randn(5, 9, generator=g).to(torch.bfloat16).requires_grad_(True)
    t = torch.randint(9, (5,), generator=g)
    out = emo_loss(zb, t, e)
    out.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(zb.grad.float()).all()
    big = torch.tensor([[500.0, -500.0, 0.0]], requires_grad=True)
    val = emo_loss(big, torch.tensor([0]), torch.eye(3))  # p_t ~ 1: emo ~ 0, guarded ratio
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(big.grad).all()


def test_errors():
    z, t, e = _data()
    with pytest.raises(ValueError, match="cost_embedding has 4 rows but logits have V=5"):
        emo_loss(z, t, e[:4])
    bad = e.clone()
    bad[2] = 0
    with pytest.raises(ValueError, match="zero-norm rows"):
        emo_loss(z, t, bad)
    with pytest.raises(ValueError, match=r"target values must be in \[0, 4\]"):
        emo_loss(z, torch.full((6,), 9), e)
    with pytest.raises(TypeError, match="floating-point"):
        emo_loss(z.long(), t, e)
    with pytest.raises(ValueError, match="exactly one of"):
        emo_loss(z, t)
    with pytest.raises(ValueError, match="exactly one of"):
        emo_loss(z, t, e, cost_matrix=torch.ones(5, 5, dtype=D))
    with pytest.raises(ValueError, match=r"cost_matrix must have shape \(5, 5\)"):
        emo_loss(z, t, cost_matrix=torch.ones(4, 4, dtype=D))
    with pytest.raises(ValueError, match="combine must be one of"):
        emo_loss(z, t, e, combine="mix")
    with pytest.raises(ValueError, match="target_probs must have the logits' shape"):
        emo_loss(z, None, e, target_probs=torch.ones(6, 4, dtype=D))
    with pytest.raises(ValueError, match="give target"):
        emo_loss(z, None, e)
    with pytest.raises(ValueError, match="shift_for_causal_lm needs logits"):
        emo_loss(z, t, e, shift_for_causal_lm=True)

import copy
import math

import pytest
import torch
from torch import nn

from kexue.optim import LoraOptimizer, RandomProjectionOptimizer, linear_weights, optimizer_state_bytes
from kexue.optim.lora_projection import (
    additive_lora_delta,
    additive_lora_gradients,
    effective_rank,
    lora_factor_gradients,
    lora_forward,
    random_projection_update,
)

D = torch.float64


def _setup(n_out=5, n_in=7, r=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    W0 = torch.randn(n_out, n_in, generator=g, dtype=D)
    A = torch.randn(r, n_in, generator=g, dtype=D)
    B = torch.randn(n_out, r, generator=g, dtype=D)
    x = torch.randn(9, n_in, generator=g, dtype=D)
    y = torch.randn(9, n_out, generator=g, dtype=D)
    return W0, A, B, x, y


@pytest.mark.parametrize("merged", [False, True])
def test_factor_gradients_are_projections_of_full_gradient(merged):
    W0, A, B, x, y = _setup()
    s = 0.5
    W = W0.clone().requires_grad_()
    ((x @ (W + s * B @ A).mT - y) ** 2).sum().backward()
    G = W.grad
    A_, B_ = A.clone().requires_grad_(), B.clone().requires_grad_()
    ((lora_forward(x, W0, A_, B_, s, merged=merged) - y) ** 2).sum().backward()
    gA, gB = lora_factor_gradients(G, A, B, s)
    torch.testing.assert_close(A_.grad, gA, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(B_.grad, gB, rtol=1e-12, atol=1e-12)
    # post layout: G_A = G_post B_postᵀ, G_B = A_postᵀ G_post with A_post = Aᵀ, B_post = Bᵀ, G_post = Gᵀ
    torch.testing.assert_close(gA.mT, s * G.mT @ B, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gB.mT, s * A @ G.mT, rtol=1e-12, atol=1e-12)


def test_lora_forward_gradcheck():
    W0, A, B, x, _ = _setup(3, 4, 2)
    A.requires_grad_()
    B.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: lora_forward(x, W0, a, b, 0.7), (A, B))


def test_first_order_identity():
    W0, A, B, x, y = _setup()
    G = torch.randn_like(W0)
    eta = 0.1
    gA, gB = lora_factor_gradients(G, A, B)
    lhs = (B - eta * gB) @ (A - eta * gA) - B @ A
    rhs = -eta * (G @ A.mT @ A + B @ B.mT @ G) + eta**2 * G @ A.mT @ B.mT @ G
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("init", ["zero", "nonzero"])
def test_optimizer_view_equals_module_lora(init):
    W0, _, _, x, y = _setup(6, 8, 3, seed=2)
    s = 2.0
    weight = nn.Parameter(W0.clone())
    opt = LoraOptimizer([weight], lr=0.01, rank=3, scaling=s, init=init, seed=4)
    A0, B0 = (t.clone() for t in opt.factors(weight))
    if init == "nonzero":
        assert B0.abs().sum() > 0
    base = W0 - s * B0 @ A0  # module form with the offset: W0 - s·B0A0 + s·BA
    A = nn.Parameter(A0.clone())
    B = nn.Parameter(B0.clone())
    torch.testing.assert_close(lora_forward(x, base, A, B, s), x @ W0.mT, rtol=1e-12, atol=1e-12)
    module_opt = torch.optim.Adam([A, B], lr=0.01, foreach=False)
    for _ in range(10):
        ((x @ weight.mT - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        ((lora_forward(x, base, A, B, s) - y) ** 2).mean().backward()
        module_opt.step()
        module_opt.zero_grad()
    torch.testing.assert_close(weight.detach(), base + s * B.detach() @ A.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(opt.factors(weight)[0], A.detach(), rtol=1e-10, atol=1e-12)


def test_fixed_lora_rank_bounded_serial_lora_is_not():
    torch.manual_seed(0)
    n, r = 12, 2
    target = torch.randn(n, n, dtype=D)
    results = {}
    for merge in (None, 5):
        w = nn.Parameter(torch.zeros(n, n, dtype=D))
        opt = LoraOptimizer([w], lr=0.05, rank=r, base="sgd", merge_every=merge, seed=1)
        for _ in range(60):
            x = torch.randn(16, n, dtype=D)
            ((x @ w.mT - x @ target.mT) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
        results[merge] = int(torch.linalg.matrix_rank(w.detach()))
    assert results[None] <= r
    assert results[5] > 2 * r


def test_random_projection_update_is_unbiased():
    G = torch.randn(6, 10, dtype=D, generator=torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(4)
    n = 4000
    draws = torch.stack([random_projection_update(G, 2, c=0.5, generator=gen) for _ in range(n)])
    mean = draws.mean(0)
    stderr = math.sqrt(float(draws.var(0).sum()) / n)
    assert float(torch.linalg.norm(mean - G)) < 5 * stderr
    assert float(torch.linalg.norm(mean - 2 * G)) > 5 * stderr  # c = 1 would be biased by 2x


def test_random_projection_optimizer_step_and_state():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(5, 8, dtype=D))
    opt = RandomProjectionOptimizer([w], lr=0.1, rank=2, c=0.5, seed=3)
    G = torch.randn(5, 8, dtype=D)
    before = w.detach().clone()
    u, v = opt.projections(w)
    assert u.shape == (8, 2) and v.shape == (2, 5)
    w.grad = G.clone()
    opt.step()
    torch.testing.assert_close(
        w.detach(), before - 0.05 * (v.mT @ v @ G + G @ u @ u.mT), rtol=1e-12, atol=1e-12
    )
    assert optimizer_state_bytes(opt) == 0
    u2, _ = opt.projections(w)
    assert not torch.equal(u, u2)  # resampled every step

    mom = RandomProjectionOptimizer([w], lr=0.1, rank=2, momentum=0.9, resample_every=3)
    w.grad = G.clone()
    mom.step()
    assert mom.state[w]["momentum_left"].shape == (2, 8) and mom.state[w]["momentum_right"].shape == (5, 2)
    assert optimizer_state_bytes(mom) == 8 * 2 * (8 + 5)


@pytest.mark.parametrize("make", ["lora", "random"])
def test_state_dict_round_trip(make):
    def build(p):
        if make == "lora":
            return LoraOptimizer([p], lr=0.01, rank=2, merge_every=3, seed=7)
        return RandomProjectionOptimizer([p], lr=0.01, rank=2, momentum=0.5, resample_every=2, seed=7)

    torch.manual_seed(5)
    grads = [torch.randn(4, 6) for _ in range(8)]
    a = nn.Parameter(torch.ones(4, 6))
    oa = build(a)
    for g in grads:
        a.grad = g.clone()
        oa.step()
    b = nn.Parameter(torch.ones(4, 6))
    ob = build(b)
    for g in grads[:5]:
        b.grad = g.clone()
        ob.step()
    c = nn.Parameter(b.detach().clone())
    oc = build(c)
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    for g in grads[5:]:
        c.grad = g.clone()
        oc.step()
    torch.testing.assert_close(a, c, rtol=0, atol=0)


def test_additive_variant():
    n, m, r = 6, 8, 2
    a = torch.randn(n, r, dtype=D, requires_grad=True)
    b = torch.randn(r, m, dtype=D, requires_grad=True)
    G = torch.randn(n, m, dtype=D)
    delta = additive_lora_delta(a, b)
    assert int(torch.linalg.matrix_rank(delta.detach())) <= 2 * r
    (delta * G).sum().backward()
    gA, gB = additive_lora_gradients(G, r)
    torch.testing.assert_close(a.grad, gA)
    torch.testing.assert_close(b.grad, gB)
    a1 = additive_lora_delta(a.detach()[:, :1], b.detach()[:1])  # r = 1: ΔW_ij = a_i + b_j
    torch.testing.assert_close(a1, a.detach()[:, :1] + b.detach()[:1])
    torch.testing.assert_close(additive_lora_gradients(G, 1)[0][:, 0], G.sum(1))
    with pytest.raises(ValueError, match="divisible"):
        additive_lora_gradients(torch.zeros(5, 8), 2)


def test_effective_rank_and_linear_weights():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    assert effective_rank(torch.outer(torch.arange(1.0, 4.0), torch.ones(3))) == pytest.approx(1.0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert linear_weights(model) == [model[0].weight, model[2].weight]


def test_errors():
    w = nn.Parameter(torch.zeros(4, 6))
    with pytest.raises(ValueError, match="rank"):
        LoraOptimizer([w], lr=0.1, rank=0)
    with pytest.raises(ValueError, match="rank"):
        LoraOptimizer([w], lr=0.1, rank=5)
    with pytest.raises(ValueError, match="2-D"):
        RandomProjectionOptimizer([nn.Parameter(torch.zeros(4))], lr=0.1, rank=1)
    with pytest.raises(ValueError, match="lr"):
        RandomProjectionOptimizer([w], lr=-0.1, rank=1)
    with pytest.raises(ValueError, match="momentum"):
        RandomProjectionOptimizer([w], lr=0.1, rank=1, momentum=1.0)
    with pytest.raises(ValueError, match="base"):
        LoraOptimizer([w], lr=0.1, rank=1, base="lamb")


def test_compressed_momentum_is_projection_of_full_momentum():
    torch.manual_seed(1)
    w = nn.Parameter(torch.zeros(5, 7, dtype=D))
    opt = RandomProjectionOptimizer([w], lr=0.1, rank=2, momentum=0.8, resample_every=100)
    full = torch.zeros(5, 7, dtype=D)
    for _ in range(4):
        G = torch.randn(5, 7, dtype=D)
        full = 0.8 * full + 0.2 * G
        w.grad = G
        opt.step()
    u, v = opt.projections(w)
    torch.testing.assert_close(opt.state[w]["momentum_left"], v @ full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(opt.state[w]["momentum_right"], full @ u, rtol=1e-12, atol=1e-12)

import copy

import pytest
import torch
from torch import nn

from kexue.optim import SGDM, Adam, AdamW, Tiger, beta_tilde

D = torch.float64


def _regression_grads(n_micro, seed=0, d=6):
    """Gradients of random linear-regression micro-batches, evaluated at the current parameters."""
    g = torch.Generator().manual_seed(seed)
    data = [
        (torch.randn(4, d, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D))
        for _ in range(n_micro)
    ]

    def grad(w, i):
        x, y = data[i]
        return x.T @ (x @ w - y) / x.shape[0]

    return grad


def _ema_sgdm_reference(w0, grad, n_groups, k, lr, beta):
    """Explicit accumulation: mean of k gradients, then one EMA-form SGDM step."""
    w = w0.clone()
    m = torch.zeros_like(w)
    for t in range(n_groups):
        g = sum(grad(w, t * k + j) for j in range(k)) / k
        m = beta * m + (1 - beta) * g
        w = w - lr[t] * m
    return w


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_sgdm_builtin_equals_explicit(k):
    n_groups = 8
    grad = _regression_grads(n_groups * k)
    w0 = torch.randn(6, dtype=D, generator=torch.Generator().manual_seed(1))
    lrs = [0.1 / (1 + t) for t in range(n_groups)]
    p = nn.Parameter(w0.clone())
    opt = SGDM([p], lr=lrs[0], beta=0.9, accumulate_steps=k)
    for t in range(n_groups):
        opt.param_groups[0]["lr"] = lrs[t]
        for j in range(k):
            before = p.detach().clone()
            p.grad = grad(p.detach(), t * k + j)
            opt.step()
            if j < k - 1:
                assert torch.equal(before, p.detach())
    expected = _ema_sgdm_reference(w0, grad, n_groups, k, lrs, 0.9)
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-12)
    assert len(opt.state[p]) == 1


def test_sgdm_single_step_by_hand():
    p = nn.Parameter(torch.tensor([1.0, -2.0], dtype=D))
    opt = SGDM([p], lr=0.5, beta=0.8, weight_decay=0.1)
    p.grad = torch.tensor([0.3, 0.4], dtype=D)
    opt.step()
    g = torch.tensor([0.3, 0.4], dtype=D) + 0.1 * torch.tensor([1.0, -2.0], dtype=D)
    torch.testing.assert_close(
        p.detach(), torch.tensor([1.0, -2.0], dtype=D) - 0.5 * 0.2 * g, rtol=0, atol=1e-15
    )


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_k1_equals_torch_adam(decoupled):
    torch.manual_seed(0)
    w0 = torch.randn(5, 3, dtype=D)
    grads = [torch.randn(5, 3, dtype=D) for _ in range(12)]
    ours = nn.Parameter(w0.clone())
    ref = nn.Parameter(w0.clone())
    cls = AdamW if decoupled else Adam
    peer = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([ours], lr=0.01, weight_decay=0.05)
    opt_ref = peer([ref], lr=0.01, weight_decay=0.05, foreach=False)
    for g in grads:
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-14)


def _adam_pair(k, same_grads, decoupled=False, mode="exact"):
    torch.manual_seed(3)
    w0 = torch.randn(4, dtype=D)
    built = nn.Parameter(w0.clone())
    ref = nn.Parameter(w0.clone())
    cls = AdamW if decoupled else Adam
    opt_b = cls([built], lr=0.05, weight_decay=0.01, accumulate_steps=k, accumulation=mode)
    opt_r = cls([ref], lr=0.05, weight_decay=0.01)
    for _ in range(6):
        base = torch.randn(4, dtype=D)
        micro = [base if same_grads else torch.randn(4, dtype=D) for _ in range(k)]
        for g in micro:
            built.grad = g.clone()
            opt_b.step()
        ref.grad = sum(micro) / k
        opt_r.step()
    return built.detach(), ref.detach()


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_builtin_exact_for_identical_micro_gradients_only(decoupled):
    a, b = _adam_pair(4, same_grads=True, decoupled=decoupled)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    a, b = _adam_pair(4, same_grads=False, decoupled=decoupled)
    assert (a - b).abs().max() > 1e-6  # v holds mean(g^2), not mean(g)^2


def test_tiger_builtin_accumulation_on_regression():
    k, n_groups = 4, 10
    grad = _regression_grads(n_groups * k, seed=5)
    w0 = torch.randn(6, dtype=D, generator=torch.Generator().manual_seed(2))
    p = nn.Parameter(w0.clone())
    opt = Tiger([p], lr=0.01, beta=0.9, weight_decay=0.1, rms_scaling=False, accumulate_steps=k)
    for i in range(n_groups * k):
        p.grad = grad(p.detach(), i)
        opt.step()
    w, m = w0.clone(), torch.zeros(6, dtype=D)
    for t in range(n_groups):
        g = sum(grad(w, t * k + j) for j in range(k)) / k
        m = 0.9 * m + 0.1 * g
        w = w - 0.01 * (torch.sign(m) + 0.1 * w)
    torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)


def test_beta_tilde_and_modes():
    assert beta_tilde(0.9, 1) == 0.9
    assert beta_tilde(0.9, 4) == pytest.approx(0.975)
    assert beta_tilde(0.9, 4) ** 4 == pytest.approx(0.9037, abs=1e-4)
    # beta_tilde mode: EMA with beta~ every micro-step, update every k-th; chi_only: beta every micro-step
    for mode, b in (("beta_tilde", beta_tilde(0.9, 4)), ("chi_only", 0.9)):
        p = nn.Parameter(torch.zeros(2, dtype=D))
        opt = SGDM([p], lr=1.0, beta=0.9, accumulate_steps=4, accumulation=mode)
        m = torch.zeros(2, dtype=D)
        w = torch.zeros(2, dtype=D)
        for i in range(8):
            g = torch.tensor([1.0 + i, -i], dtype=D)
            p.grad = g.clone()
            opt.step()
            m = b * m + (1 - b) * g
            if i % 4 == 3:
                w = w - m
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)


def test_state_dict_resumes_mid_group():
    grads = [torch.randn(3, dtype=D, generator=torch.Generator().manual_seed(i)) for i in range(9)]

    def fresh():
        p = nn.Parameter(torch.ones(3, dtype=D))
        return p, Adam([p], lr=0.1, accumulate_steps=3)

    p1, o1 = fresh()
    for g in grads:
        p1.grad = g.clone()
        o1.step()
    p2, o2 = fresh()
    for g in grads[:4]:
        p2.grad = g.clone()
        o2.step()
    saved = copy.deepcopy(o2.state_dict())
    p3 = nn.Parameter(p2.detach().clone())
    o3 = Adam([p3], lr=0.1, accumulate_steps=3)
    o3.load_state_dict(saved)
    assert o3.micro_step == 4 and not o3.is_update_step
    for g in grads[4:]:
        p3.grad = g.clone()
        o3.step()
    assert torch.equal(p1, p3)
    assert {k for k, v in o3.state[p3].items() if isinstance(v, torch.Tensor)} == {"exp_avg", "exp_avg_sq"}


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (SGDM, {"lr": -0.1}, "lr"),
        (SGDM, {"lr": 0.1, "beta": 1.0}, "beta"),
        (SGDM, {"lr": 0.1, "accumulate_steps": 0}, "accumulate_steps"),
        (SGDM, {"lr": 0.1, "accumulate_steps": 1.5}, "accumulate_steps"),
        (Adam, {"betas": (0.9, 1.0)}, "betas"),
        (Adam, {"betas": (-0.1, 0.9)}, "betas"),
        (Adam, {"eps": 0.0}, "eps"),
        (Adam, {"weight_decay": -1.0}, "weight_decay"),
        (Adam, {"accumulation": "mean"}, "accumulation"),
    ],
)
def test_bad_arguments(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)


def test_sparse_gradient_rejected():
    emb = nn.Embedding(4, 2, sparse=True)
    opt = Adam(emb.parameters())
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()

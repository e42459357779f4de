import copy
import math

import pytest
import torch
from torch import nn

from kexue.optim import (
    Lion,
    Tiger,
    optimizer_state_bytes,
    piecewise_linear,
    tiger_lr_from_adamw,
    tiger_param_groups,
)

D = torch.float64


def _params(seed=0, shapes=((5, 4), (3,), (2, 3, 2))):
    g = torch.Generator().manual_seed(seed)
    return [nn.Parameter(torch.randn(*s, generator=g, dtype=D)) for s in shapes]


def _grads(params, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g, dtype=D) for p in params] for _ in range(steps)]


def _run(opt, params, grads):
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


def test_plain_step_matches_hand_computation():
    lr, beta, wd = 0.01, 0.9, 0.1
    p = nn.Parameter(torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=D))
    opt = Tiger([p], lr=lr, beta=beta, weight_decay=wd, rms_scaling=False)
    g1 = torch.tensor([1.0, -2.0, 0.0, 3.0], dtype=D)
    g2 = torch.tensor([-3.0, 1.0, 0.0, -1.0], dtype=D)
    theta = p.detach().clone()
    m = torch.zeros(4, dtype=D)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        m = beta * m + (1 - beta) * g
        theta = theta - lr * (torch.sign(m) + wd * theta)
        torch.testing.assert_close(p.detach(), theta, rtol=0, atol=1e-15)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-15)
    # third coordinate: zero gradient and zero momentum -> sign(0) = 0, only the decay acts
    assert p[2].item() == pytest.approx(2.0 * (1 - lr * wd) ** 2, abs=1e-15)


def test_rms_rule_per_kind():
    alpha, beta, wd = 0.02, 0.9, 0.1
    kernel, bias, gain, emb = _params(3, ((4, 5), (5,), (5,), (6, 3)))
    opt = Tiger(
        [
            {"params": [kernel], "kind": "kernel"},
            {"params": [bias], "kind": "bias"},
            {"params": [gain], "kind": "gain"},
            {"params": [emb], "kind": "embedding"},
        ],
        lr=alpha,
        beta=beta,
        weight_decay=wd,
    )
    before = [t.detach().clone() for t in (kernel, bias, gain, emb)]
    grads = [torch.randn_like(t) for t in before]
    for t, g in zip((kernel, bias, gain, emb), grads):
        t.grad = g
    opt.step()
    s = [torch.sign((1 - beta) * g) for g in grads]
    eta_k = alpha * before[0].pow(2).mean().sqrt()
    torch.testing.assert_close(kernel.detach(), before[0] - eta_k * (s[0] + wd * before[0]))
    torch.testing.assert_close(bias.detach(), before[1] - 0.5 * alpha * s[1])  # no decay
    torch.testing.assert_close(gain.detach(), before[2] - 0.5 * alpha * s[2])
    eta_rows = alpha * before[3].pow(2).mean(dim=1, keepdim=True).sqrt()
    torch.testing.assert_close(emb.detach(), before[3] - eta_rows * (s[3] + wd * before[3]))


def test_rms_floor_keeps_zero_tensor_moving():
    p = nn.Parameter(torch.zeros(3, 3, dtype=D))
    opt = Tiger([p], lr=0.1, weight_decay=0.0, rms_floor=1e-3)
    p.grad = torch.ones(3, 3, dtype=D)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3, 3), -0.1 * 1e-3, dtype=D))


def test_equals_lion_with_equal_betas_and_foreach_path():
    params = _params()
    grads = _grads(params, 20)
    results = []
    for make in (
        lambda ps: Tiger(ps, lr=1e-2, beta=0.95, weight_decay=0.1, rms_scaling=False, foreach=False),
        lambda ps: Tiger(ps, lr=1e-2, beta=0.95, weight_decay=0.1, rms_scaling=False, foreach=True),
        lambda ps: Lion(ps, lr=1e-2, betas=(0.95, 0.95), weight_decay=0.1, foreach=False),
        lambda ps: Lion(ps, lr=1e-2, betas=(0.95, 0.95), weight_decay=0.1, foreach=True),
    ):
        ps = [nn.Parameter(p.detach().clone()) for p in params]
        _run(make(ps), ps, grads)
        results.append([p.detach() for p in ps])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_matches_lion_pytorch():
    lion_pytorch = pytest.importorskip("lion_pytorch")
    params = [nn.Parameter(p.detach().float()) for p in _params()]
    grads = [[g.float() for g in gs] for gs in _grads(params, 20)]
    ours = [nn.Parameter(p.detach().clone()) for p in params]
    peer = [nn.Parameter(p.detach().clone()) for p in params]
    _run(Tiger(ours, lr=1e-3, beta=0.965, weight_decay=0.01, rms_scaling=False), ours, grads)
    _run(lion_pytorch.Lion(peer, lr=1e-3, betas=(0.965, 0.965), weight_decay=0.01), peer, grads)
    for a, b in zip(ours, peer):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("rms", [False, True])
def test_builtin_accumulation_equals_explicit(k, rms):
    params = _params(5)
    n_groups = 4
    micro = _grads(params, n_groups * k, seed=7)
    lrs = [0.01 * (1 + i) for i in range(n_groups)]  # schedule held fixed inside each group
    built = [nn.Parameter(p.detach().clone()) for p in params]
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    opt_b = Tiger(built, lr=1.0, beta=0.9, weight_decay=0.05, rms_scaling=rms, accumulate_steps=k)
    opt_r = Tiger(ref, lr=1.0, beta=0.9, weight_decay=0.05, rms_scaling=rms)
    for gi in range(n_groups):
        for grp in (*opt_b.param_groups, *opt_r.param_groups):
            grp["lr"] = lrs[gi]
        for j in range(k):
            before = [p.detach().clone() for p in built]
            assert opt_b.is_update_step == (j == k - 1)
            for p, g in zip(built, micro[gi * k + j]):
                p.grad = g.clone()
            opt_b.step()
            if j < k - 1:
                assert all(torch.equal(a, b) for a, b in zip(before, built))
        for idx, p in enumerate(ref):
            p.grad = sum(micro[gi * k + j][idx] for j in range(k)) / k
        opt_r.step()
        for a, b in zip(built, ref):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-12)
    assert all(len(opt_b.state[p]) == 1 for p in built)


def test_constant_sign_trajectory_matches_closed_form():
    lr, wd, n = 0.05, 0.1, 300
    theta0 = torch.tensor([0.3, -0.2], dtype=D)
    p = nn.Parameter(theta0.clone())
    opt = Tiger([p], lr=lr, beta=0.9, weight_decay=wd, rms_scaling=False)
    g = torch.tensor([1.0, -1.0], dtype=D)
    for _ in range(n):
        p.grad = g.clone()
        opt.step()
    target = -torch.sign(g) / wd
    expected = target + (1 - lr * wd) ** n * (theta0 - target)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-12)


def test_absent_row_momentum_never_underflows_and_lazy_stops_drift():
    m = torch.full((4,), 1e-5)
    for _ in range(10_000):
        m.lerp_(torch.zeros(4), 1 - 0.965)
    assert (m != 0).all()  # stalls at a subnormal: sign(m) stays +1

    def run(lazy):
        emb = nn.Parameter(torch.full((3, 2), 0.01))
        opt = Tiger([emb], lr=0.01, beta=0.965, weight_decay=0.1, rms_scaling=False, lazy=lazy)
        emb.grad = torch.tensor([[1.0, -1.0], [0.5, 0.5], [0.0, 0.0]])
        opt.step(present_rows={emb: torch.tensor([0, 1])})
        m_after_first = opt.state[emb]["exp_avg"].clone()
        frozen = emb.detach()[1].clone()
        for _ in range(200):
            emb.grad = torch.tensor([[1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
            opt.step(present_rows={emb: torch.tensor([0])})
        return emb.detach(), frozen, m_after_first, opt.state[emb]["exp_avg"]

    plain, _, _, _ = run(None)
    assert plain[1].abs().min() > 1.0  # absent row kept moving at full speed
    for lazy in ("param", "state"):
        final, frozen, m0, m1 = run(lazy)
        assert torch.equal(final[1], frozen)  # bit-identical while absent
        assert torch.equal(final[2], torch.full((2,), 0.01))  # never seen, never touched
        if lazy == "param":
            torch.testing.assert_close(m1[1], m0[1] * 0.965**200, rtol=1e-4, atol=0)
        else:
            assert torch.equal(m1[1], m0[1])


def test_lazy_rows_detected_from_nonzero_gradient_and_sparse_gradients():
    torch.manual_seed(0)
    dense = nn.Embedding(10, 3)
    sparse = nn.Embedding(10, 3, sparse=True)
    sparse.weight.data.copy_(dense.weight.data)
    opt_d = Tiger([dense.weight], lr=0.01, kind="embedding", lazy="param")
    opt_s = Tiger([sparse.weight], lr=0.01, kind="embedding", lazy="param")
    for step in range(5):
        ids = torch.tensor([[1, 4, 4], [7, 1, 2]]) + step % 2
        for emb, opt in ((dense, opt_d), (sparse, opt_s)):
            emb(ids).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(dense.weight, sparse.weight, rtol=0, atol=1e-7)
    assert torch.equal(dense.weight[9], sparse.weight[9])
    with pytest.raises(TypeError, match="sparse"):
        opt = Tiger([sparse.weight], lr=0.01)
        sparse(torch.tensor([1])).sum().backward()
        opt.step()


def test_nan_guard_shrinks_and_keeps_momentum():
    w, gain, other = _params(4, ((3, 2), (2,), (4,)))
    opt = Tiger(
        [{"params": [w]}, {"params": [gain], "kind": "gain"}, {"params": [other]}],
        lr=0.01,
        nan_guard=True,
        shrink_ratio=0.99,
        rms_scaling=False,
    )
    for t in (w, gain, other):
        t.grad = torch.ones_like(t)
    opt.step()
    m = [opt.state[t]["exp_avg"].clone() for t in (w, gain, other)]
    before = [t.detach().clone() for t in (w, gain, other)]
    w.grad = torch.full_like(w, math.nan)
    gain.grad = torch.tensor([1.0, math.nan], dtype=D)
    other.grad = torch.ones_like(other)
    opt.step()
    torch.testing.assert_close(w.detach(), before[0] * 0.99)
    torch.testing.assert_close(gain.detach(), (before[1] - 1) * 0.99 + 1)
    assert torch.equal(opt.state[w]["exp_avg"], m[0]) and torch.equal(opt.state[gain]["exp_avg"], m[1])
    assert not torch.equal(other.detach(), before[2])
    assert opt.micro_step == 2


@pytest.mark.parametrize("k", [1, 3])
def test_state_dict_round_trip_resumes_identically(k):
    params = _params(6)
    grads = _grads(params, 10, seed=8)
    a = [nn.Parameter(p.detach().clone()) for p in params]
    opt_a = Tiger(a, lr=0.01, accumulate_steps=k, weight_decay=0.1)
    _run(opt_a, a, grads)

    b = [nn.Parameter(p.detach().clone()) for p in params]
    opt_b = Tiger(b, lr=0.01, accumulate_steps=k, weight_decay=0.1)
    _run(opt_b, b, grads[:4])  # for k = 3 this stops mid-group
    saved = copy.deepcopy(opt_b.state_dict())
    c = [nn.Parameter(p.detach().clone()) for p in b]
    opt_c = Tiger(c, lr=0.5, accumulate_steps=k)
    opt_c.load_state_dict(saved)
    assert opt_c.micro_step == 4 and opt_c.param_groups[0]["lr"] == 0.01
    _run(opt_c, c, grads[4:])
    for x, y in zip(a, c):
        assert torch.equal(x, y)


def test_state_memory_is_half_of_adamw():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    tiger = Tiger(model.parameters(), lr=1e-3)
    adamw = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 32)).sum().backward()
    tiger.step()
    adamw.step()
    assert all(len(s) == 1 for s in tiger.state.values())
    assert optimizer_state_bytes(tiger) * 2 == sum(
        s["exp_avg"].nbytes + s["exp_avg_sq"].nbytes for s in adamw.state.values()
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": 0.0}, "lr"),
        ({"beta": 1.0}, "beta"),
        ({"beta": -0.1}, "beta"),
        ({"weight_decay": -0.01}, "weight_decay"),
        ({"accumulate_steps": 0}, "accumulate_steps"),
        ({"accumulate_steps": 2.5}, "accumulate_steps"),
        ({"shrink_ratio": 0.0}, "shrink_ratio"),
        ({"shrink_ratio": 1.5}, "shrink_ratio"),
        ({"kind": "weights"}, "kind"),
        ({"lazy": "rows"}, "lazy"),
        ({"accumulation": "sum"}, "accumulation"),
        ({"lazy": "state", "accumulate_steps": 2}, "lazy"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Tiger([nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_lazy_needs_matrices_and_groups_cannot_change_accumulation():
    with pytest.raises(ValueError, match="embedding"):
        Tiger([nn.Parameter(torch.zeros(3))], lazy="param")
    with pytest.raises(ValueError, match="accumulate_steps"):
        Tiger([{"params": [nn.Parameter(torch.zeros(2))], "accumulate_steps": 2}], accumulate_steps=1)


def test_param_groups_helpers():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4), nn.Linear(4, 3))
    groups = tiger_param_groups(model, lazy_embeddings="param", lr=2e-3)
    kinds = {g["kind"]: g for g in groups}
    assert kinds["embedding"]["params"] == [model[0].weight] and kinds["embedding"]["lazy"] == "param"
    assert kinds["gain"]["params"] == [model[1].weight]
    assert {id(p) for p in kinds["bias"]["params"]} == {id(model[1].bias), id(model[2].bias)}
    assert kinds["kernel"]["params"] == [model[2].weight] and kinds["kernel"]["lr"] == 2e-3
    Tiger(groups)  # valid groups
    assert tiger_lr_from_adamw(3e-4, 0.01, factor=3) == pytest.approx((1e-4, 0.03))
    with pytest.raises(ValueError, match="factor"):
        tiger_lr_from_adamw(3e-4, 0.01, factor=2)
    f = piecewise_linear({100: 1.0, 300: 0.5})
    assert [f(0), f(50), f(100), f(200), f(300), f(10**6)] == pytest.approx([0.0, 0.5, 1.0, 0.75, 0.5, 0.5])

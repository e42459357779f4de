import copy

import pytest
import torch
from torch import nn

from kexue.optim import Lion

D = torch.float64


def test_lion_step_by_hand():
    lr, b1, b2, wd = 0.1, 0.9, 0.99, 0.5
    p = nn.Parameter(torch.tensor([1.0, -1.0, 0.5], dtype=D))
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    theta = p.detach().clone()
    m = torch.zeros(3, dtype=D)
    for g in (torch.tensor([1.0, 2.0, -3.0], dtype=D), torch.tensor([-0.05, 0.0, 1.0], dtype=D)):
        p.grad = g.clone()
        opt.step()
        u = torch.sign(b1 * m + (1 - b1) * g)
        theta = theta * (1 - lr * wd) - lr * u
        m = b2 * m + (1 - b2) * g
        torch.testing.assert_close(p.detach(), theta, rtol=0, atol=1e-15)
        torch.testing.assert_close(opt.state[p]["exp_avg"], m, rtol=0, atol=1e-15)


def test_lion_zero_gradient_moves_by_momentum_only():
    p = nn.Parameter(torch.tensor([1.0], dtype=D))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99))
    p.grad = torch.zeros(1, dtype=D)
    opt.step()
    assert p.item() == 1.0  # m = 0 and g = 0: sign(0) = 0


def test_lion_lazy_state_and_sparse():
    torch.manual_seed(0)
    emb = nn.Embedding(6, 2, sparse=True)
    w0 = emb.weight.detach().clone()
    opt = Lion(emb.parameters(), lr=0.01, weight_decay=0.1, lazy="state")
    for _ in range(3):
        emb(torch.tensor([0, 2])).sum().backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(emb.weight[1], w0[1]) and torch.equal(
        opt.state[emb.weight]["exp_avg"][1], torch.zeros(2)
    )
    assert not torch.equal(emb.weight[0], w0[0])


def test_lion_state_dict_round_trip():
    torch.manual_seed(1)
    grads = [torch.randn(3, 2) for _ in range(6)]
    a = nn.Parameter(torch.ones(3, 2))
    oa = Lion([a], lr=0.01)
    for g in grads:
        a.grad = g.clone()
        oa.step()
    b = nn.Parameter(torch.ones(3, 2))
    ob = Lion([b], lr=0.01)
    for g in grads[:3]:
        b.grad = g.clone()
        ob.step()
    c = nn.Parameter(b.detach().clone())
    oc = Lion([c], lr=0.5)
    oc.load_state_dict(copy.deepcopy(ob.state_dict()))
    for g in grads[3:]:
        c.grad = g.clone()
        oc.step()
    assert torch.equal(a, c)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": -1.0}, "lr"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (1.2, 0.9)}, "betas"),
        ({"weight_decay": -1}, "weight_decay"),
    ],
)
def test_lion_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lion([nn.Parameter(torch.zeros(2))], **kwargs)

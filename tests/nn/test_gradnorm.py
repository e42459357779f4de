import pytest
import torch
from torch import nn

from kexue.nn.gradnorm import GradientNormalizedCritic, gradient_normalize

D64 = torch.float64


def _critic(seed, width=32, act=lambda: nn.LeakyReLU(0.2), dim=2):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(dim, width), act(), nn.Linear(width, width), act(), nn.Linear(width, 1)
    ).to(D64)


def _pattern(net, x):
    """Activation pattern of a LeakyReLU / ReLU MLP (which linear region x lies in)."""
    signs = []
    h = x
    for layer in net:
        h = layer(h)
        if isinstance(layer, nn.Linear):
            signs.append(h > 0)
    return torch.cat(signs[:-1], dim=1)


def test_linear_critic_closed_form():
    w = torch.tensor([[3.0, -4.0]], dtype=D64)
    lin = nn.Linear(2, 1).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.fill_(0.5)
    x = torch.randn(10, 2, dtype=D64)
    f = x @ w[0] + 0.5
    out = gradient_normalize(lin, x, "gn")
    assert out.shape == (10, 1)
    assert torch.allclose(out[:, 0], f / (5.0 + f.abs()))
    assert torch.allclose(gradient_normalize(lin, x, "gran", eps=1e-4)[:, 0], f * 5 / (25 + 1e-4))
    assert torch.allclose(gradient_normalize(lin, x, "gran_simple", eps=0.0)[:, 0], f / 5)
    assert torch.allclose(gradient_normalize(lin, x, "direction")[:, 0], x @ w[0] / 5)
    assert torch.allclose(gradient_normalize(lin, x, "gn", k=2.0), 2 * out)


@pytest.mark.parametrize("variant", ["gn", "gran"])
def test_gradient_norm_bound_on_random_critics(variant):
    eps = 1e-4 if variant == "gran" else 0.0
    for seed in range(5):
        net = _critic(seed)
        x = (3 * torch.randn(1000, 2, dtype=D64)).requires_grad_(True)
        fh, f, gn = gradient_normalize(net, x, variant, eps=eps, return_parts=True)
        (g,) = torch.autograd.grad(fh.sum(), x)
        norm = g.norm(dim=1)
        if variant == "gn":
            assert bool((fh.abs() <= 1).all())
            expect = gn.pow(2) / (gn + f[:, 0].abs()).pow(2)
        else:
            expect = gn.pow(2) / (gn.pow(2) + eps)
        assert bool((norm <= 1 + 1e-12).all())
        assert torch.allclose(norm, expect.detach(), rtol=1e-6, atol=1e-12)


def test_lipschitz_bound_within_a_linear_region_and_jump_across():
    net = _critic(7)
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(4000, 2, generator=g, dtype=D64)
    y = x + 0.05 * torch.randn(4000, 2, generator=g, dtype=D64)
    fx = gradient_normalize(net, x)[:, 0].detach()
    fy = gradient_normalize(net, y)[:, 0].detach()
    with torch.no_grad():
        same = (_pattern(net, x) == _pattern(net, y)).all(dim=1)
    assert int(same.sum()) > 1000
    dist = (x - y).norm(dim=1)
    # regions are convex, so the whole segment lies in one region: |f(x) - f(y)| <= ||x - y||
    assert bool(((fx - fy).abs()[same] <= dist[same] * (1 + 1e-9)).all())
    # bounded everywhere
    assert bool(((fx - fy).abs() <= 2).all())
    # ... but not globally Lipschitz: somewhere across a boundary the ratio exceeds 1 (the post's doubt)
    assert float(((fx - fy).abs() / dist)[~same].max()) > 1.0


def test_scale_invariance_and_sign_flip():
    net = _critic(3)
    x = torch.randn(64, 2, dtype=D64)

    class Scaled(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c

        def forward(self, z):
            return self.c * net(z)

    base = gradient_normalize(net, x, "gn")
    assert torch.allclose(gradient_normalize(Scaled(7.5), x, "gn"), base)
    assert torch.allclose(gradient_normalize(Scaled(-1.0), x, "gn"), -base)
    gran = gradient_normalize(net, x, "gran", eps=0.0)
    assert torch.allclose(gradient_normalize(Scaled(3.0), x, "gran", eps=0.0), gran)


def test_gradients_reach_parameters_through_the_norm():
    net = _critic(4)
    x = torch.randn(32, 2, dtype=D64)
    fh = gradient_normalize(net, x, "gn")
    grads = torch.autograd.grad(fh.sum(), list(net.parameters()))
    # the first layer's weights only enter f_hat through f AND ||g||; check against finite differences
    w = net[0].weight
    i, j, h = 1, 0, 1e-6
    with torch.no_grad():
        w[i, j] += h
    up = gradient_normalize(net, x, "gn").sum().detach()
    with torch.no_grad():
        w[i, j] -= 2 * h
    down = gradient_normalize(net, x, "gn").sum().detach()
    with torch.no_grad():
        w[i, j] += h
    assert float(grads[0][i, j]) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5, abs=1e-8)
    # the last bias shifts f but not ||g||: gradient = sum_i ||g|| / (||g|| + |f|)^2
    _, f, gn = gradient_normalize(net, x, "gn", return_parts=True)
    expect = (gn / (gn + f[:, 0].abs()).pow(2)).sum()
    assert torch.allclose(grads[-1][0], expect.detach())


def test_generator_side_gradient_and_image_shaped_inputs():
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(4 * 4 * 4, 1)
    ).double()
    z = torch.randn(5, 36, dtype=D64, requires_grad=True)
    x = z.reshape(5, 1, 6, 6) * 2  # non-leaf, as a generator output
    fh, f, gn = gradient_normalize(conv, x, return_parts=True)
    assert fh.shape == (5, 1)
    # per-sample norm over all non-batch dims
    xl = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(conv(xl).sum(), xl)
    assert torch.allclose(gn, g.reshape(5, -1).norm(dim=1))
    (gz,) = torch.autograd.grad(fh.sum(), z)
    assert gz.abs().sum() > 0


def test_wrapper_module_and_bad_inputs():
    net = _critic(5)
    wrapped = GradientNormalizedCritic(net, "gran", eps=1e-6)
    x = torch.randn(8, 2, dtype=D64)
    assert torch.allclose(wrapped(x), gradient_normalize(net, x, "gran", eps=1e-6))
    with pytest.raises(ValueError, match="variant must be"):
        gradient_normalize(net, x, "spectral")
    with pytest.raises(ValueError, match="eps must be"):
        gradient_normalize(net, x, eps=-1.0)
    with pytest.raises(ValueError, match="k must be"):
        gradient_normalize(net, x, k=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        gradient_normalize(net, torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one score per sample"):
        gradient_normalize(lambda z: z, x)
    with pytest.raises(ValueError, match="k must be"):
        GradientNormalizedCritic(net, k=-2.0)

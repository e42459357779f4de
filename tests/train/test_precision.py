import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.train.precision import (
    StaticLossScaler,
    cross_entropy_fp32,
    layer_norm_fp32,
    make_grad_scaler,
    masked_fill_min,
    masked_softmax,
    precision_context,
    probe_autocast_dtypes,
    resolve_dtype,
    safe_eps,
    softmax_fp32,
)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def test_fp32_context_is_a_no_op():
    model = _mlp()
    x = torch.randn(5, 8)
    plain = model(x)
    with precision_context("cpu", "fp32"):
        inside = model(x)
    assert torch.equal(plain, inside)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_keeps_master_weights_and_state_fp32(dtype):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(5, 8), torch.randint(0, 4, (5,))
    with precision_context("cpu", dtype):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    assert logits.dtype == resolve_dtype(dtype)
    assert loss.dtype == torch.float32
    loss.backward()
    opt.step()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters())
    assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != "step")


def test_cpu_autocast_leaves_softmax_in_low_precision_and_islands_fix_it():
    dtypes = probe_autocast_dtypes("cpu", "bf16")
    assert dtypes["softmax"] == torch.bfloat16 and dtypes["layer_norm"] == torch.bfloat16
    assert dtypes["cross_entropy"] == torch.float32
    x = torch.randn(3, 7) * 10
    with precision_context("cpu", "bf16"):
        h = x @ torch.eye(7)
        p = softmax_fp32(h)
        ln = layer_norm_fp32(h, 7)
        ce = cross_entropy_fp32(h, torch.tensor([0, 1, 2]))
    assert p.dtype == torch.bfloat16 and ln.dtype == torch.bfloat16 and ce.dtype == torch.float32
    torch.testing.assert_close(p.float(), torch.softmax(h.float(), -1), rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(ce, F.cross_entropy(h.float(), torch.tensor([0, 1, 2])))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_masked_softmax_is_finite(dtype):
    logits = torch.randn(3, 5).to(dtype)
    mask = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    p = masked_softmax(logits, mask)
    assert p.dtype == dtype and torch.isfinite(p).all()
    assert torch.equal(p[1], torch.zeros(5, dtype=dtype))
    assert (p[0][~mask[0]] == 0).all()
    torch.testing.assert_close(p[0].float().sum(), torch.tensor(1.0), rtol=0, atol=1e-2)
    u = masked_softmax(logits, mask, fully_masked="uniform")
    torch.testing.assert_close(u[1].float(), torch.full((5,), 0.2), rtol=0, atol=1e-3)
    assert torch.isfinite(masked_fill_min(logits, mask)).all()


def test_additive_1e12_mask_breaks_fp16():
    x = torch.randn(2, 4, dtype=torch.float16)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=torch.float16)
    assert torch.isinf(torch.tensor(1e12, dtype=torch.float16))
    bad = torch.softmax(x - (1 - mask) * torch.tensor(1e12, dtype=torch.float16), dim=-1)
    assert torch.isnan(bad).all()  # 0 * inf = NaN on the kept positions poisons every row


def test_static_scaler_unscales_and_skips_nonfinite():
    model = _mlp()
    x = torch.randn(4, 8)
    model(x).pow(2).mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    scaler = StaticLossScaler(1024.0)
    scaler.scale(model(x).pow(2).mean()).backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert not scaler.unscale_(opt)
    for p, r in zip(model.parameters(), ref):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in model.parameters()]
    next(model.parameters()).grad[0, 0] = float("inf")
    scaler.update()
    scaler.step(opt)
    assert scaler.skipped_steps == 1 and scaler.found_inf
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_adam_scaled_loss_equals_smaller_eps():
    torch.manual_seed(0)
    w0 = torch.randn(6, dtype=torch.float64)
    data = [torch.randn(6, dtype=torch.float64) for _ in range(50)]
    S, eps = 1000.0, 1e-3
    a = nn.Parameter(w0.clone())
    b = nn.Parameter(w0.clone())
    oa = torch.optim.Adam([a], lr=1e-2, eps=eps)
    ob = torch.optim.Adam([b], lr=1e-2, eps=eps / S)
    for x in data:
        for p, o, scale in ((a, oa, S), (b, ob, 1.0)):
            o.zero_grad()
            (scale * ((p - x) ** 2).sum()).backward()
            o.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_grad_scaler_choices_and_errors():
    assert isinstance(make_grad_scaler("cpu", "fp16"), torch.amp.GradScaler)
    assert make_grad_scaler("cpu", "fp16").is_enabled()
    assert not make_grad_scaler("cpu", "bf16").is_enabled()
    assert isinstance(make_grad_scaler("cpu", "fp32", 128.0), StaticLossScaler)
    with pytest.raises(ValueError, match="int8"):
        resolve_dtype(torch.int8)
    with pytest.raises(ValueError, match="fp8"):
        precision_context("cpu", "fp8")
    with pytest.raises(ValueError, match="device"):
        precision_context("tpu-ish", "bf16")
    with pytest.raises(ValueError, match="loss scale"):
        StaticLossScaler(0.0)
    assert safe_eps("fp16") == 1e-4 and safe_eps("bf16") == 1e-8
    assert torch.tensor(1e-8, dtype=torch.float16) == 0  # why fp16 needs the larger eps

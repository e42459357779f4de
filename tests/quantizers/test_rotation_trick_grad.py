import pytest
import torch

from kexue.quantizers import rotation_matrix, rotation_trick, straight_through


def _pair(n=16, d=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    q = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    up = torch.randn(n, d, generator=g, dtype=torch.float64)
    return z, q, up


def test_forward_value_is_exactly_the_code():
    z, q, _ = _pair()
    for fn in (rotation_trick, straight_through):
        out = fn(z.float().requires_grad_(True), q.float())
        assert torch.equal(out, q.float())
        out = fn(z.clone().requires_grad_(True), q)
        assert torch.equal(out, q)


def test_gradient_equals_explicit_rotation_matrix_form():
    z, q, g = _pair()
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((rotation_trick(zz, q) * g).sum(), zz)
    R = rotation_matrix(z, q)  # (n, d, d)
    lam = q.norm(dim=-1) / z.norm(dim=-1)
    expected = lam[:, None] * torch.einsum("nji,nj->ni", R, g)  # lambda R^T g
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)
    # and the explicit R is a proper rotation taking u to v
    u, v = z / z.norm(dim=-1, keepdim=True), q / q.norm(dim=-1, keepdim=True)
    eye = torch.eye(z.shape[1], dtype=torch.float64).expand_as(R)
    torch.testing.assert_close(R.transpose(1, 2) @ R, eye)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(z.shape[0], dtype=torch.float64))
    torch.testing.assert_close(torch.einsum("nij,nj->ni", R, u), v)


def test_angle_and_norm_ratio_are_preserved():
    z, q, g = _pair(seed=1)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((rotation_trick(zz, q) * g).sum(), zz)
    cos_in = torch.nn.functional.cosine_similarity(grad, z, dim=-1)
    cos_out = torch.nn.functional.cosine_similarity(g, q, dim=-1)
    torch.testing.assert_close(cos_in, cos_out)
    torch.testing.assert_close(grad.norm(dim=-1) / g.norm(dim=-1), q.norm(dim=-1) / z.norm(dim=-1))
    (grad_nr,) = torch.autograd.grad((rotation_trick(zz, q, rescale=False) * g).sum(), zz)
    torch.testing.assert_close(grad_nr.norm(dim=-1), g.norm(dim=-1))


def test_equal_vectors_give_the_ste_gradient_and_far_translation_tends_to_ste():
    z, _, g = _pair(seed=2)
    zz = z.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((rotation_trick(zz, z.clone()) * g).sum(), zz)
    torch.testing.assert_close(grad, g)
    (ste,) = torch.autograd.grad((straight_through(zz, z * 0.3) * g).sum(), zz)
    torch.testing.assert_close(ste, g)
    # shifting z and q by t * w for large t: the gradient approaches g
    _, q, _ = _pair(seed=2)
    w = torch.randn(z.shape[1], dtype=torch.float64)
    errs = []
    for t in (1.0, 1e2, 1e4):
        zt = (z + t * w).requires_grad_(True)
        (gt,) = torch.autograd.grad((rotation_trick(zt, q + t * w) * g).sum(), zt)
        errs.append(float((gt - g).norm() / g.norm()))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3


def test_no_gradient_reaches_the_code():
    z, q, g = _pair()
    qq = q.clone().requires_grad_(True)
    zz = z.clone().requires_grad_(True)
    (rotation_trick(zz, qq) * g).sum().backward()
    assert qq.grad is None
    (straight_through(zz, qq) * g).sum().backward()
    assert qq.grad is None


def test_degenerate_rows_are_finite():
    z = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [1.0, -1.0, 0.5], [2.0, 0.0, 0.0]], requires_grad=True
    )
    q = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [-2.0, 2.0, -1.0], [3.0, 0.0, 0.0]])
    g = torch.ones(4, 3)
    out = rotation_trick(z, q)
    assert torch.equal(out, q)
    (out * g).sum().backward()
    assert torch.isfinite(z.grad).all()
    torch.testing.assert_close(z.grad[0], g[0])  # ||z|| = 0 -> STE
    torch.testing.assert_close(z.grad[1], g[1])  # ||q|| = 0 -> STE
    # antipodal: reflection I - 2 v v^T scaled by lambda
    v = q[2] / q[2].norm()
    lam = q[2].norm() / z[2].norm()
    torch.testing.assert_close(z.grad[2], lam * (g[2] - 2 * v * (v @ g[2])))
    torch.testing.assert_close(z.grad[3], 1.5 * g[3])  # parallel: pure rescale


def test_batched_and_half_precision_shapes():
    z = torch.randn(2, 3, 5, 8, requires_grad=True)
    q = torch.randn(2, 3, 5, 8)
    out = rotation_trick(z, q)
    assert out.shape == z.shape
    out.sum().backward()
    zh = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    out = rotation_trick(zh, torch.randn(4, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        rotation_trick(torch.randn(3, 4), torch.randn(3, 5))
    with pytest.raises(TypeError, match="floating-point"):
        rotation_trick(torch.ones(3, 4, dtype=torch.int64), torch.randn(3, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        straight_through([1.0], torch.randn(1))

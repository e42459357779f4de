import pytest
import torch
import torch.nn.functional as F

from kexue.quantizers import VectorQuantizer, kmeans, nearest_codes


def _brute_nearest(x, cb):
    return torch.cdist(x.double(), cb.double()).argmin(dim=1)


def test_chunked_nearest_codes_equal_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 6, generator=g, dtype=torch.float64)
    cb = torch.randn(50, 6, generator=g, dtype=torch.float64)
    ref = _brute_nearest(x, cb)
    for budget in (50, 700, 10**6):  # 1 row per chunk, 14 rows per chunk, one chunk
        assert torch.equal(nearest_codes(x, cb, max_distance_elements=budget), ref)
    xn, cn = F.normalize(x, dim=-1), F.normalize(cb, dim=-1)
    assert torch.equal(nearest_codes(xn, cn, cosine=True, max_distance_elements=99), (xn @ cn.T).argmax(1))


@pytest.mark.parametrize(
    "options",
    [
        dict(grad="ste"),
        dict(grad="rotation"),
        dict(grad="ste", ema_decay=0.8),
        dict(grad="rotation", codebook="linear"),
        dict(grad="ste", codebook="diagonal"),
        dict(grad="rotation", cosine=True),
    ],
)
def test_forward_is_the_nearest_code_exactly(options):
    init = None if "codebook" in options else "normal"
    vq = VectorQuantizer(8, 32, init=init, seed=0, **options).double()
    x = torch.randn(5, 11, 8, dtype=torch.float64, requires_grad=True)
    cb = vq.codebook.detach().clone()  # EMA updates the codebook after the lookup
    out, idx, loss = vq(x)
    if vq.cosine:
        cb = F.normalize(cb, dim=-1)
        ref = (F.normalize(x.detach(), dim=-1).reshape(-1, 8) @ cb.T).argmax(1)
    else:
        ref = _brute_nearest(x.detach().reshape(-1, 8), cb)
    assert torch.equal(idx.reshape(-1), ref)
    assert torch.equal(out.detach(), cb[idx])
    vq.eval()
    if vq.ema_decay is None:
        assert torch.equal(vq.indices_to_codes(idx).detach(), out.detach())
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_ste_gradient_is_identity_and_codebook_gets_no_gradient_through_the_output():
    vq = VectorQuantizer(6, 16, seed=1, init="normal").double()
    x = torch.randn(40, 6, dtype=torch.float64, requires_grad=True)
    g = torch.randn(40, 6, dtype=torch.float64)
    out, _, _ = vq(x)
    (out * g).sum().backward()
    torch.testing.assert_close(x.grad, g)
    assert vq.embed.grad is None


def test_rotation_gradient_matches_closed_form_inside_the_module():
    vq = VectorQuantizer(5, 12, grad="rotation", seed=2, init="normal").double()
    x = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    g = torch.randn(30, 5, dtype=torch.float64)
    out, idx, _ = vq(x)
    (out * g).sum().backward()
    q = vq.embed.detach()[idx]
    z = x.detach()
    u, v = z / z.norm(dim=1, keepdim=True), q / q.norm(dim=1, keepdim=True)
    r = (u + v) / (u + v).norm(dim=1, keepdim=True)
    eye = torch.eye(5, dtype=torch.float64)
    R = eye - 2 * r[:, :, None] * r[:, None, :] + 2 * v[:, :, None] * u[:, None, :]
    lam = q.norm(dim=1) / z.norm(dim=1)
    expected = lam[:, None] * torch.einsum("nji,nj->ni", R, g)
    torch.testing.assert_close(x.grad, expected)
    assert vq.embed.grad is None


def test_losses_and_their_weights():
    vq = VectorQuantizer(4, 8, commitment_weight=0.3, codebook_weight=0.7, seed=3, init="normal").double()
    x = torch.randn(20, 4, dtype=torch.float64, requires_grad=True)
    out, idx, loss, parts = vq(x, return_loss_breakdown=True)
    q = vq.embed.detach()[idx]
    mse = ((x.detach() - q) ** 2).mean()
    torch.testing.assert_close(parts.commitment, mse)
    torch.testing.assert_close(parts.codebook, mse)
    torch.testing.assert_close(loss.detach(), (0.3 + 0.7) * mse)
    loss.backward()
    # commitment moves z: d/dz 0.3 * mean((z - sg(q))^2); codebook loss moves the selected codes only
    torch.testing.assert_close(x.grad, 0.3 * 2 * (x.detach() - q) / x.numel())
    expected_cb = torch.zeros_like(vq.embed).index_add_(0, idx, 0.7 * 2 * (q - x.detach()) / x.numel())
    torch.testing.assert_close(vq.embed.grad, expected_cb)


def test_ema_update_matches_the_formula():
    vq = VectorQuantizer(3, 4, ema_decay=0.8, ema_eps=1e-5, seed=4).double()
    c0 = vq.embed.clone()
    x = torch.randn(50, 3, dtype=torch.float64)
    _, idx, loss = vq(x)
    counts = torch.bincount(idx, minlength=4).double()
    sums = torch.zeros(4, 3, dtype=torch.float64).index_add_(0, idx, x)
    n_k = 0.8 * torch.ones(4, dtype=torch.float64) + 0.2 * counts
    s_k = 0.8 * c0 + 0.2 * sums
    smoothed = (n_k + 1e-5) / (n_k.sum() + 4e-5) * n_k.sum()
    torch.testing.assert_close(vq.embed, s_k / smoothed[:, None])
    assert vq.codebook_weight == 0 and not vq.embed.requires_grad
    vq.eval()
    before = vq.embed.clone()
    vq(x)
    assert torch.equal(before, vq.embed)  # no update in eval mode


def test_simvq_identity_transform_equals_plain_vq_and_materialise():
    sim = VectorQuantizer(6, 20, codebook="linear", seed=5).double()
    with torch.no_grad():
        sim.transform.weight.copy_(torch.eye(6, dtype=torch.float64))
    plain = VectorQuantizer(6, 20, init="normal").double()
    with torch.no_grad():
        plain.embed.copy_(sim.basis)
    x = torch.randn(3, 9, 6, dtype=torch.float64)
    a, b = sim(x), plain(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)
    with torch.no_grad():
        sim.transform.weight.copy_(torch.randn(6, 6, dtype=torch.float64))
    mat = sim.materialise()
    a, b = sim(x), mat(x)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.quantized, b.quantized)


def test_simvq_gradients_basis_frozen_and_w_closed_form():
    sim = VectorQuantizer(4, 10, codebook="linear", codebook_dim=3, commitment_weight=0.0, seed=6).double()
    assert not sim.basis.requires_grad and sim.transform.bias is None
    x = torch.randn(25, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(25, 4, dtype=torch.float64)
    out, idx, loss = sim(x)
    (loss + (out * g).sum()).backward()
    torch.testing.assert_close(x.grad, g)  # encoder gradient is STE's
    E = sim.basis
    C = sim.codebook.detach()
    dq = 2 * (C[idx] - x.detach()) / x.numel()  # d codebook-loss / d q
    dC = torch.zeros_like(C).index_add_(0, idx, dq)
    torch.testing.assert_close(sim.transform.weight.grad, dC.T @ E)  # C = E W^T -> dL/dW = dC^T E


def _one_sgd_step(vq, x):
    opt = torch.optim.SGD(vq.parameters(), lr=0.1)
    before = vq.codebook.detach().clone()
    _, idx, loss = vq(x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = (vq.codebook.detach() - before).abs().sum(dim=1) > 0
    return idx, changed


def test_one_step_moves_only_selected_codes_in_plain_vq_but_all_codes_in_simvq():
    torch.manual_seed(0)
    plain = VectorQuantizer(8, 64, init="normal", seed=7)
    x = plain.embed.detach()[3].repeat(16, 1) + 0.01 * torch.randn(16, 8)
    idx, changed = _one_sgd_step(plain, x)
    assert set(idx.tolist()) == {3} and changed.sum() == 1 and changed[3]
    sim = VectorQuantizer(8, 64, codebook="linear", seed=7)
    x = sim.codebook.detach()[5].repeat(16, 1) + 0.01 * torch.randn(16, 8)
    idx, changed = _one_sgd_step(sim, x)
    assert set(idx.tolist()) == {5} and bool(changed.all())


def test_shapes_and_channel_first():
    vq = VectorQuantizer(8, 32, seed=0)
    for shape, idx_shape in [((7, 8), (7,)), ((2, 5, 8), (2, 5)), ((2, 8, 4, 3), (2, 4, 3))]:
        out, idx, _ = vq(torch.randn(*shape))
        assert out.shape == shape and idx.shape == idx_shape and idx.dtype == torch.int64
    img = torch.randn(2, 8, 4, 3)
    out, idx, _ = vq(img)
    last = VectorQuantizer(8, 32, seed=0, channel_first=False)
    out2, idx2, _ = last(img.permute(0, 2, 3, 1))
    assert torch.equal(out, out2.permute(0, 3, 1, 2)) and torch.equal(idx, idx2)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match="codebook_size must be >= 2"):
        VectorQuantizer(8, 1)
    with pytest.raises(TypeError, match="dim must be an int"):
        VectorQuantizer(8.0, 16)
    with pytest.raises(ValueError, match="grad"):
        VectorQuantizer(8, 16, grad="gumbel")
    with pytest.raises(ValueError, match="bypass"):
        VectorQuantizer(8, 16, codebook="linear", ema_decay=0.9)
    with pytest.raises(ValueError, match="codebook_weight must be 0"):
        VectorQuantizer(8, 16, ema_decay=0.9, codebook_weight=1.0)
    with pytest.raises(ValueError, match="codebook_weight must be > 0"):
        VectorQuantizer(8, 16, codebook="linear", codebook_weight=0.0)
    with pytest.raises(ValueError, match="codebook_dim"):
        VectorQuantizer(8, 16, codebook="linear", codebook_dim=0)
    vq = VectorQuantizer(8, 16)
    with pytest.raises(ValueError, match="8 channels"):
        vq(torch.randn(4, 7))
    with pytest.raises(TypeError, match="floating-point"):
        vq(torch.ones(4, 8, dtype=torch.int32))
    x = torch.randn(4, 8)
    x[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        vq(x)


def test_kmeans_recovers_separated_clusters_and_kmeans_init():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    x = centres.repeat(50, 1) + 0.1 * torch.randn(200, 2, generator=g)
    found, counts = kmeans(x, 4, 20, generator=torch.Generator().manual_seed(1))
    dist = torch.cdist(found, centres).min(dim=1).values
    assert float(dist.max()) < 0.1 and counts.sum() == 200
    vq = VectorQuantizer(2, 4, kmeans_init=True, seed=1)
    _, idx, loss = vq(x)
    assert bool(vq.initialised) and len(set(idx.tolist())) == 4 and float(loss.detach()) < 0.05


def test_dead_codes_are_replaced_by_batch_vectors():
    vq = VectorQuantizer(4, 32, init="uniform", dead_code_threshold=0.5, dead_code_decay=0.5, seed=8)
    x = torch.randn(64, 4) + 10.0  # far from every code: only one or two codes get used
    used = set(vq(x).indices.tolist())
    used |= set(vq(x).indices.tolist())  # usage EMA of unused codes falls to 0.25 < 0.5 -> replaced
    rows = vq.embed.detach()
    in_batch = (rows[:, None, :] == x[None, :, :]).all(dim=-1).any(dim=1)
    never_used = torch.tensor([k not in used for k in range(32)])
    assert len(used) < 8 and bool(in_batch[never_used].all())
    _, idx, _ = vq(x)
    assert len(set(idx.tolist())) > 10


def test_cosine_lookup_outputs_unit_vectors():
    vq = VectorQuantizer(6, 16, grad="rotation", cosine=True, seed=9).double()
    x = (3 * torch.randn(10, 6, dtype=torch.float64)).requires_grad_(True)
    out, _, _ = vq(x)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(10, dtype=torch.float64))


def test_seed_determinism():
    a = VectorQuantizer(8, 64, codebook="linear", seed=11)
    b = VectorQuantizer(8, 64, codebook="linear", seed=11)
    assert torch.equal(a.basis, b.basis)
    c = VectorQuantizer(8, 64, seed=12)
    d = VectorQuantizer(8, 64, seed=12)
    assert torch.equal(c.embed, d.embed)
    assert not torch.equal(VectorQuantizer(8, 64, seed=13).embed, c.embed)


def test_usage_statistics_from_the_module():
    vq = VectorQuantizer(2, 4, kmeans_init=True, seed=1)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0], [0.0, -5.0]])
    vq(centres.repeat(25, 1))
    stats = vq.usage()
    assert stats.n_tokens == 100 and stats.utilisation == 1.0 and abs(stats.perplexity - 4) < 1e-9
    vq.reset_usage()
    vq(centres[:1].repeat(10, 1))
    stats = vq.usage()
    assert stats.dead_codes == 3 and abs(stats.perplexity - 1) < 1e-12


def test_simvq_codebook_loss_gradient_passes_finite_differences():
    sim = VectorQuantizer(4, 12, codebook="linear", codebook_dim=3, commitment_weight=0.0, seed=14).double()
    x = torch.randn(20, 4, dtype=torch.float64)
    weight = sim.transform.weight.detach().clone().requires_grad_(True)

    def loss_of(w):
        # the assignment is locally constant, so the loss is smooth in W around this point
        return torch.func.functional_call(sim, {"transform.weight": w}, (x,)).loss

    assert torch.autograd.gradcheck(loss_of, (weight,))


def test_blocked_argmin_matches_argmin_with_ties():
    from kexue.quantizers.vq import _arg_best

    g = torch.Generator().manual_seed(15)
    s = torch.randint(0, 50, (300, 1024), generator=g).float()  # many ties
    assert torch.equal(_arg_best(s, largest=False), s.argmin(dim=1))
    assert torch.equal(_arg_best(s, largest=True), s.argmax(dim=1))
    odd = torch.randn(7, 1000, generator=g)
    assert torch.equal(_arg_best(odd, largest=False), odd.argmin(dim=1))

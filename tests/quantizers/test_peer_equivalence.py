"""Agreement with vector-quantize-pytorch where the definitions coincide (skipped if the peer is absent)."""

import pytest
import torch

from kexue.quantizers import FSQ, VectorQuantizer, rotation_trick

vqp = pytest.importorskip("vector_quantize_pytorch")


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [8, 8, 8, 5, 5, 5]])
def test_fsq_codes_and_indices_equal_the_peer_with_its_eps(levels):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 256, len(levels), generator=g) * 3
    peer = vqp.FSQ(levels)
    ours = FSQ(levels, eps=-1e-3)
    p_codes, p_idx = peer(z)
    o_codes, o_idx = ours(z)
    assert torch.equal(o_codes, p_codes) and torch.equal(o_idx, p_idx.long())
    assert torch.equal(ours.implicit_codebook, peer.implicit_codebook)
    assert torch.equal(
        ours.codes_to_indices(ours.implicit_codebook), peer.codes_to_indices(peer.implicit_codebook).long()
    )


def test_fsq_paper_eps_agrees_with_the_peer_on_nearly_all_vectors():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 20000, 3, generator=g) * 3
    _, p_idx = vqp.FSQ([8, 6, 5])(z)
    _, o_idx = FSQ([8, 6, 5])(z)
    agree = (o_idx == p_idx.long()).float().mean()
    assert 0.995 <= float(agree) < 1.0


def test_fsq_sigmoid_variant_equals_peer_symmetry_preserving_on_half_input():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 512, 4, generator=g) * 3
    peer = vqp.FSQ([8, 5, 4, 2], preserve_symmetry=True)
    ours = FSQ([8, 5, 4, 2], bound="sigmoid")
    p_codes, p_idx = peer(z / 2)
    o_codes, o_idx = ours(z)
    torch.testing.assert_close(o_codes, p_codes)
    assert torch.equal(o_idx, p_idx.long())


def test_rotation_gradient_equals_peer_rotate_to():
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    g = torch.Generator().manual_seed(3)
    z = torch.randn(512, 32, generator=g)
    q = torch.randn(512, 32, generator=g) * 0.7
    up = torch.randn(512, 32, generator=g)
    za = z.clone().requires_grad_(True)
    zb = z.clone().requires_grad_(True)
    (rotation_trick(za, q) * up).sum().backward()
    (rotate_to(zb, q) * up).sum().backward()
    torch.testing.assert_close(za.grad, zb.grad, rtol=1e-5, atol=1e-6)


def test_vector_quantizer_matches_peer_indices_and_encoder_gradient():
    torch.manual_seed(4)
    peer = vqp.VectorQuantize(dim=16, codebook_size=128, rotation_trick=True, ema_update=False)
    peer.train()
    ours = VectorQuantizer(16, 128, grad="rotation", ema_decay=0.8)
    with torch.no_grad():
        ours.embed.copy_(peer._codebook.embed[0])
    x = torch.randn(4, 50, 16)
    up = torch.randn(4, 50, 16)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ours.eval()  # no EMA step, like the peer with ema_update=False
    qa, ia, _ = ours(xa)
    qb, ib, _ = peer(xb)
    assert torch.equal(ia, ib)
    torch.testing.assert_close(qa, qb, rtol=1e-5, atol=1e-5)
    (qa * up).sum().backward()
    (qb * up).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)


def test_simvq_matches_peer_given_the_same_frozen_codebook_and_w():
    torch.manual_seed(5)
    peer = vqp.SimVQ(dim=16, codebook_size=256, rotation_trick=True)
    ours = VectorQuantizer(16, 256, grad="rotation", codebook="linear")
    with torch.no_grad():
        ours.basis.copy_(peer.frozen_codebook)
        ours.transform.weight.copy_(peer.code_transform.weight)
    x = torch.randn(2, 64, 16)
    qa, ia, _ = ours(x)
    qb, ib, _ = peer(x)
    assert torch.equal(ia, ib)
    torch.testing.assert_close(qa, qb, rtol=1e-5, atol=1e-5)

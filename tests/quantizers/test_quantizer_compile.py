import torch

from kexue.quantizers import FSQ, VectorQuantizer


def test_quantizers_compile_as_one_graph_and_match_eager():
    torch.manual_seed(0)
    modules = [
        FSQ([8, 5, 5, 5], dim=8),
        VectorQuantizer(8, 64, grad="rotation", seed=0),
        VectorQuantizer(8, 64, codebook="linear", seed=0),
    ]
    for mod in modules:
        mod.eval()
        compiled = torch.compile(mod, backend="eager", fullgraph=True)
        x = torch.randn(3, 10, 8, requires_grad=True)
        out = compiled(x)
        ref = mod(x)
        torch.testing.assert_close(out[0], ref[0])
        assert torch.equal(out[1], ref[1])
        out[0].sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()

import pytest
import torch

from kexue.repro import _lengthext as lx


def test_batches_are_seeded_and_repeat_windows_repeat():
    data = torch.arange(1000, dtype=torch.uint8).repeat(5)
    a = lx.train_batch(data, 16, 8, torch.Generator().manual_seed(0))
    b = lx.train_batch(data, 16, 8, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == (8, 17)
    rep = a[-2:]
    assert torch.equal(rep[:, 9:], rep[:, :8])  # first ceil(17 / 2) = 9 bytes written twice, cut to 17
    assert not torch.equal(a[0, 9:], a[0, :8])
    syn = lx.train_batch(None, 16, 4, torch.Generator().manual_seed(1))
    assert syn.shape == (4, 17) and int(syn.max()) < lx.LAGCOPY_VOCAB


def test_model_names_and_variants():
    s = lx.SETTINGS["full"]
    cfg = lx.model_config("hwfa", s)
    assert [c.window for c in cfg.layers] == [16, 16, 16, None] and cfg.layers[-1].position == "none"
    assert [c.window for c in lx.model_config("hwfa2", s).layers] == [32, 32, None, 32]
    assert lx.model_config("invleaky", s).attention.leaky_factor == 1 / 16
    ext = lx.variant("leaky")(512, s)
    assert (ext.rerope_window, ext.leaky_factor) == (16, 31.0)  # the spec's k for T = 512
    assert lx.variant("ntk")(256, s).scaling.factor == 4.0
    with pytest.raises(ValueError, match="unknown harness model"):
        lx.model_config("alibi", s)
    with pytest.raises(ValueError, match="unknown inference variant"):
        lx.variant("xpos")

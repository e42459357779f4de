import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.optim import Tiger
from kexue.train import TrainConfig, maybe_compile, train


def _data(n_batches, batch=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, 2, generator=g, dtype=dtype)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 4, generator=g, dtype=dtype)
        out.append((x, x @ w))
    return out


def _mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def test_train_reduces_loss_and_logs_curves():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    log = train(
        model,
        _mse,
        _data(60),
        opt,
        TrainConfig(steps=60, log_every=10, clip_grad_norm=10.0),
        progress=lambda it, desc: (seen.append(desc), it)[1],
    )
    assert seen == ["train"]
    assert log.step == [10, 20, 30, 40, 50, 60] and log.updates == 60
    assert log.loss[-1] < 0.05 * log.loss[0]
    assert all(math.isfinite(g) for g in log.grad_norm)


def test_accumulation_equals_big_batch():
    batches = _data(8, batch=4, dtype=torch.float64)
    big = [(torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])) for a, b in zip(batches[::2], batches[1::2])]
    finals = []
    for data, k in ((batches, 2), (big, 1)):
        torch.manual_seed(0)
        model = nn.Linear(4, 2).double()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train(model, _mse, data, opt, TrainConfig(steps=4, accumulate_steps=k))
        finals.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=1e-12)


def test_fp16_grad_scaler_and_bf16_run_on_cpu():
    losses = {}
    for precision in ("fp32", "bf16", "fp16"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        log = train(model, _mse, _data(40), opt, TrainConfig(steps=40, precision=precision, log_every=40))
        assert all(p.dtype == torch.float32 for p in model.parameters())
        losses[precision] = log.final_loss
    for precision in ("bf16", "fp16"):
        assert math.isfinite(losses[precision])
        assert losses[precision] == pytest.approx(losses["fp32"], rel=0.2)


def test_nonfinite_step_is_skipped_and_scheduler_not_advanced():
    model = nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    data = _data(3)
    data[1] = (data[1][0] * float("inf"), data[1][1])
    log = train(model, _mse, data, opt, TrainConfig(steps=3, loss_scale=8.0), scheduler=sched)
    assert log.skipped_steps == 1
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**2)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_step_kwargs_and_several_optimizers():
    torch.manual_seed(0)
    emb = nn.Embedding(20, 4)
    head = nn.Linear(4, 2)
    model = nn.Sequential(emb, head)
    lazy = Tiger([emb.weight], lr=0.01, lazy="param", rms_scaling=False, kind="embedding")
    adam = torch.optim.Adam(head.parameters(), lr=0.01)
    untouched = emb.weight.detach()[10:].clone()
    data = [(torch.randint(0, 10, (6,)), torch.randn(6, 2)) for _ in range(5)]
    log = train(
        model,
        lambda m, b: F.mse_loss(m(b[0]), b[1]),
        data,
        [lazy, adam],
        TrainConfig(steps=5),
        step_kwargs=lambda o, b: {"present_rows": {emb.weight: b[0]}} if o is lazy else {},
    )
    assert log.updates == 5
    assert torch.equal(emb.weight.detach()[10:], untouched)


def test_stops_when_batches_run_out_and_validates_config():
    model = nn.Linear(4, 2)
    log = train(model, _mse, _data(3), torch.optim.SGD(model.parameters(), lr=0.1), TrainConfig(steps=10))
    assert log.updates == 3
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(steps=1, precision="fp8")
    with pytest.raises(ValueError, match="clip_grad_norm"):
        TrainConfig(steps=1, clip_grad_norm=-1.0)


def test_compile_switch_falls_back_to_eager():
    model = nn.Linear(3, 2)
    assert maybe_compile(model, False) is model

    def broken_backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    wrapped = maybe_compile(model, True, backend=broken_backend)
    x = torch.randn(2, 3)
    with pytest.warns(UserWarning, match="running eagerly"):
        out = wrapped(x)
    assert torch.equal(out, model(x)) and wrapped.fallback_reason is not None
    assert list(wrapped.state_dict()) == ["module.weight", "module.bias"]


_DDP_SCRIPT = """
import datetime, os, socket, sys
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from kexue.train import TrainConfig, train


def data(n_batches, batch, dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 2, generator=g, dtype=dtype)
    out = []
    for _ in range(n_batches):
        x = torch.randn(batch, 4, generator=g, dtype=dtype)
        out.append((x, x @ w))
    return out


def mse(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y)


def worker(rank, world, port, k, out_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = DDP(nn.Linear(4, 2).double())
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        batches = data(8, 4, torch.float64)[rank::world]
        log = train(model, mse, batches, opt, TrainConfig(steps=2, accumulate_steps=k, reduce_loss=True))
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        torch.save({"params": flat, "loss": log.loss}, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(worker, args=(2, port, 2, sys.argv[1]), nprocs=2, start_method="spawn")
"""


def test_ddp_two_processes_match_single_process(tmp_path):
    """Two gloo ranks (a fresh interpreter, spawned workers, bounded by timeouts) == one process."""
    import subprocess
    import sys

    script = tmp_path / "ddp_run.py"
    script.write_text(_DDP_SCRIPT)
    out = str(tmp_path / "ddp")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(script), out], env=env, capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = torch.load(f"{out}.0"), torch.load(f"{out}.1")
    assert torch.equal(r0["params"], r1["params"]) and r0["loss"] == r1["loss"]
    # single process: each update averages the 4 micro-batches the two ranks saw together
    data = _data(8, batch=4, dtype=torch.float64)
    torch.manual_seed(0)
    model = nn.Linear(4, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    order = [data[i] for i in (0, 2, 1, 3, 4, 6, 5, 7)]  # rank 0 takes 0,2,4,6; rank 1 takes 1,3,5,7
    train(model, _mse, order, opt, TrainConfig(steps=2, accumulate_steps=4))
    torch.testing.assert_close(r0["params"], torch.cat([p.detach().reshape(-1) for p in model.parameters()]))

"""Step time and optimizer-state memory: kexue Tiger / Lion vs torch AdamW and lion-pytorch.

Same parameters and gradients for every optimizer, ``optimizer.step()`` timed alone, rounds
interleaved across optimizers, median reported. Prints absolute numbers and peer/ours ratios
(time: > 1 means ours is faster; memory: > 1 means ours holds less state).

    python benchmarks/optimizers.py            # 8 x 1024² + 8 x 1024 parameters (8.4M)
    python benchmarks/optimizers.py --quick    # 8 x 256² + 8 x 256, a few seconds
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from kexue.optim import Lion, Tiger, optimizer_state_bytes


def make_params(width: int, n: int, seed: int = 0) -> tuple[list[nn.Parameter], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(width, width)] * n + [(width,)] * n
    params = [nn.Parameter(torch.randn(*s, generator=gen) * 0.02) for s in shapes]
    grads = [torch.randn(*s, generator=gen) for s in shapes]
    return params, grads


def candidates(have_lion_pytorch: bool) -> dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]]:
    c: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
        "torch AdamW (foreach)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=True),
        "torch AdamW (for-loop)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, foreach=False),
        "torch AdamW (fused)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True),
        "kexue Tiger": lambda ps: Tiger(ps, lr=1e-3, weight_decay=0.01, rms_scaling=False),
        "kexue Tiger (foreach)": lambda ps: Tiger(
            ps, lr=1e-3, weight_decay=0.01, rms_scaling=False, foreach=True
        ),
        "kexue Tiger (RMS rule)": lambda ps: Tiger(ps, lr=1e-3, weight_decay=0.01, rms_scaling=True),
        "kexue Lion": lambda ps: Lion(ps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1),
    }
    if have_lion_pytorch:
        import lion_pytorch
        from lion_pytorch.foreach import Lion as LionForeach

        c["lion-pytorch Lion"] = lambda ps: lion_pytorch.Lion(
            ps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1
        )
        c["lion-pytorch Lion (foreach)"] = lambda ps: LionForeach(
            ps, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1
        )
        c["lion-pytorch as Tiger"] = lambda ps: lion_pytorch.Lion(
            ps, lr=1e-3, betas=(0.965, 0.965), weight_decay=0.01
        )
    if importlib.util.find_spec("pytorch_optimizer") is not None:
        import pytorch_optimizer

        c["pytorch-optimizer Tiger"] = lambda ps: pytorch_optimizer.Tiger(
            ps, lr=1e-3, beta=0.965, weight_decay=0.01
        )
    return c


def measure(width: int, n: int, rounds: int, steps: int) -> dict[str, tuple[float, int]]:
    have_lion = importlib.util.find_spec("lion_pytorch") is not None
    if not have_lion:
        print("note: lion-pytorch is not installed (pip install lion-pytorch); its rows are skipped")
    setups = {}
    for name, make in candidates(have_lion).items():
        params, grads = make_params(width, n)
        for p, g in zip(params, grads):
            p.grad = g
        try:
            opt = make(params)
            opt.step()  # create the state
        except (RuntimeError, TypeError, ValueError) as exc:
            print(f"skipping {name}: {type(exc).__name__}: {exc}")
            continue
        setups[name] = opt
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for name, opt in setups.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: (statistics.median(times[k]), optimizer_state_bytes(setups[k])) for k in setups}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small model, few rounds (seconds)")
    parser.add_argument("--width", type=int, default=None, help="matrix width (default 1024, quick 256)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)
    width = args.width or (256 if args.quick else 1024)
    rounds = args.rounds or (3 if args.quick else 5)
    n = 8
    n_params = n * width * width + n * width
    print(
        f"{n} x {width}² + {n} x {width} = {n_params / 1e6:.2f}M fp32 parameters; optimizer.step() only; "
        f"median of {rounds} rounds x {args.steps} steps; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, CPU {torch.backends.cpu.get_cpu_capability()}"
    )
    res = measure(width, n, rounds, args.steps)
    print(f"\n{'optimizer':32s} {'step ms':>9s} {'state MB':>9s}")
    for name, (t, b) in res.items():
        print(f"{name:32s} {t * 1e3:9.2f} {b / 2**20:9.2f}")
    ours = ["kexue Tiger", "kexue Tiger (RMS rule)", "kexue Lion"]
    peers = [k for k in res if not k.startswith("kexue")]
    print("\npeer/ours ratios (time > 1: ours faster; memory > 1: ours holds less state)")
    for o in ours:
        if o not in res:
            continue
        for p in peers:
            to, bo = res[o]
            tp, bp = res[p]
            mem = f"{bp / bo:5.2f}" if bo else "  n/a"
            print(f"  {p:30s} / {o:24s} time {tp / to:5.2f}   memory {mem}")
    if "kexue Tiger" in res and "torch AdamW (foreach)" in res:
        t_ratio = res["kexue Tiger"][0] / res["torch AdamW (foreach)"][0]
        m_ratio = res["kexue Tiger"][1] / res["torch AdamW (foreach)"][1]
        print(
            f"\ntargets: Tiger state / AdamW state = {m_ratio:.2f} (target 0.50); "
            f"Tiger step / AdamW(foreach) step = {t_ratio:.2f} (target <= 1.00)"
        )
        if "kexue Tiger (RMS rule)" in res:
            print(
                f"RMS-rule overhead: {res['kexue Tiger (RMS rule)'][0] / res['kexue Tiger'][0]:.2f}x plain Tiger"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

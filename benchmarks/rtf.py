"""Benchmark: RTF kernel generation vs an S4D Vandermonde kernel of equal state size (and scipy's lfilter).

Claim (kexue.fm/archives/10180): the RTF kernel costs O(L log L) time and O(L) memory whatever the state size
d, while an S4D-style kernel ``2 Re sum_n C_n (exp(dt A_n) - 1)/A_n exp(dt A_n l)`` costs O(H d L).

Peers: the S4D kernel (the formula of state-spaces/s4 ``models/s4/s4d.py``, which is not on PyPI, so it is
implemented in ``kexue.nn.rtf.s4d_vandermonde_kernel``) and, for the impulse response of the same rational
filter computed by recursion, ``scipy.signal.lfilter`` (optional). Prints absolute times, peak extra memory
(measured in a fresh subprocess per configuration) and peer/ours ratios, all from one run.

    python benchmarks/rtf.py --quick
    python benchmarks/rtf.py                      # H=64, L=4096, d in {16, 64, 256, 1024}; L up to 65536
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

_MEM_SNIPPET = r"""
import json, sys, torch
torch.set_num_threads(1)


def hwm_kib():
    # peak RSS of this process image (VmHWM is reset by exec, unlike ru_maxrss which inherits the parent's)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


from kexue.nn.rtf import rtf_kernel, s4d_init, s4d_vandermonde_kernel
kind, h, d, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
if kind == "rtf":
    a, b = 0.5 * torch.randn(h, d, generator=g) / d, torch.randn(h, d, generator=g)
    fn = lambda: rtf_kernel(a, b, length)
else:
    p = s4d_init(h, d, generator=g)
    fn = lambda: s4d_vandermonde_kernel(*p, length)
before = hwm_kib()
k = fn()
after = hwm_kib()
print(json.dumps({"peak_kib": after, "before_kib": before, "n": k.numel()}))
"""


def _best(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _peak_mib(kind: str, h: int, d: int, length: int) -> float:
    """Extra peak RSS (MiB) of one kernel computation in a fresh process (peak after minus peak before)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _MEM_SNIPPET, kind, str(h), str(d), str(length)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    return max(rec["peak_kib"] - rec["before_kib"], 1) / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="seconds-long run: L=1024, d in {16, 256}")
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurement")
    args = parser.parse_args(argv)

    try:
        import numpy as np
        import torch

        from kexue.nn.rtf import rtf_kernel, s4d_init, s4d_vandermonde_kernel
    except ImportError as exc:  # pragma: no cover - environment problem
        print(f"cannot run the benchmark: {exc}")
        return 0
    torch.set_num_threads(args.threads)
    h = args.heads
    if args.quick:
        length, states, lengths, rep = 1024, [16, 256], [2**k for k in range(10, 14)], 10
    else:
        length, states, lengths, rep = 4096, [16, 64, 256, 1024], [2**k for k in range(10, 17)], 5
    g = torch.Generator().manual_seed(0)

    print(f"# Kernel generation, H={h}, L={length}, float32, {args.threads} thread(s), best of repeats")
    print(
        f"{'d':>6} {'RTF ms':>10} {'S4D ms':>10} {'S4D/RTF':>9} {'RTF MiB':>9} {'S4D MiB':>9} {'mem S4D/RTF':>12}"
    )
    t_rtf, t_s4d = [], []
    for d in states:
        a, b = 0.5 * torch.randn(h, d, generator=g) / d, torch.randn(h, d, generator=g)
        p = s4d_init(h, d, generator=g)
        tr = _best(lambda a=a, b=b: rtf_kernel(a, b, length), rep)
        ts = _best(lambda p=p: s4d_vandermonde_kernel(*p, length), 1 if d >= 1024 else max(2, rep // 3))
        t_rtf.append(tr)
        t_s4d.append(ts)
        if args.no_memory or not os.path.exists("/proc/self/status"):
            mr = ms = float("nan")
        else:
            mr, ms = _peak_mib("rtf", h, d, length), _peak_mib("s4d", h, d, length)
        print(
            f"{d:>6} {1e3 * tr:>10.3f} {1e3 * ts:>10.2f} {ts / tr:>9.1f} {mr:>9.1f} {ms:>9.1f} {ms / mr:>12.2f}"
        )
    print(
        f"growth from d={states[0]} to d={states[-1]}: RTF x{t_rtf[-1] / t_rtf[0]:.2f}, "
        f"S4D x{t_s4d[-1] / t_s4d[0]:.1f}"
    )

    print(f"\n# Time vs length, H={h}, d=64")
    print(f"{'L':>7} {'RTF ms':>10} {'S4D ms':>10} {'S4D/RTF':>9} {'RTF ms / (L log2 L) x1e6':>26}")
    a, b = 0.5 * torch.randn(h, 64, generator=g) / 64, torch.randn(h, 64, generator=g)
    p = s4d_init(h, 64, generator=g)
    tl, sl = [], []
    for n in lengths:
        tl.append(_best(lambda n=n: rtf_kernel(a, b, n), rep))
        sl.append(_best(lambda n=n: s4d_vandermonde_kernel(*p, n), 2))
        print(
            f"{n:>7} {1e3 * tl[-1]:>10.3f} {1e3 * sl[-1]:>10.2f} {sl[-1] / tl[-1]:>9.1f} "
            f"{1e9 * tl[-1] / (n * math.log2(n)):>26.3f}"
        )
    slope = float(np.polyfit(np.log(lengths), np.log(tl), 1)[0])
    slope_s4d = float(np.polyfit(np.log(lengths), np.log(sl), 1)[0])
    print(f"log-log slope of time vs L: RTF {slope:.2f} (L log L gives ~1.1), S4D {slope_s4d:.2f}")

    try:
        from scipy.signal import lfilter
    except ImportError:
        print("\nscipy is not installed: skipping the lfilter comparison")
        return 0
    d = 64
    a64 = 0.5 * torch.randn(h, d, generator=g, dtype=torch.float64) / d
    b64 = torch.randn(h, d, generator=g, dtype=torch.float64)
    an, bn = a64.numpy(), b64.numpy()
    impulse = np.zeros(length)
    impulse[0] = 1.0

    def scipy_kernels() -> np.ndarray:
        return np.stack([lfilter(bn[i], np.r_[1.0, an[i]], impulse) for i in range(h)])

    tf = _best(lambda: rtf_kernel(a64, b64, length), rep)
    tsp = _best(scipy_kernels, max(2, rep // 3))
    diff = float(np.abs(scipy_kernels() - rtf_kernel(a64, b64, length).numpy()).max())
    print(f"\n# Impulse response of the same rational filter, H={h}, d={d}, L={length}, float64")
    print(
        f"RTF (FFT) {1e3 * tf:.3f} ms; scipy.signal.lfilter {1e3 * tsp:.2f} ms; lfilter/RTF = {tsp / tf:.1f}"
    )
    print(
        f"max |difference| = {diff:.2e} (RTF is the L-periodic fold; lfilter truncates the infinite response)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

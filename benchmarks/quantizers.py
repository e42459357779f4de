"""Benchmark kexue.quantizers against vector-quantize-pytorch (lucidrains) on the same inputs.

For each configuration both implementations run one training step (forward + backward of the output sum
plus the auxiliary loss) on the same tensors in this process. Printed: median wall time per step (ms),
peak tensor memory allocated during one step (MiB; torch profiler CPU allocation events, so only tensor
memory counts), and peer/ours ratios (> 1 means ours is faster / smaller). Numeric agreement is checked
where the definitions coincide: FSQ codes and indices (ours with the peer's ``eps=-1e-3`` bound, and the
paper's ``1 - eps``), VQ / SimVQ indices, outputs and input gradients given the same codebook.

    python benchmarks/quantizers.py            # the spec's sizes
    python benchmarks/quantizers.py --quick    # small sizes, a few seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

from kexue.quantizers import FSQ, VectorQuantizer


def peak_tensor_memory(fn: Callable[[], None]) -> float:
    """Peak bytes of tensor memory held during ``fn()`` above the level at its start (CPU allocator)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = []
    for ev in prof.events():
        if ev.name == "[memory]":
            deltas.append((ev.time_range.start, ev.cpu_memory_usage))
        elif ev.self_cpu_memory_usage:
            deltas.append((ev.time_range.start, ev.self_cpu_memory_usage))
    deltas.sort()
    cur = peak = 0
    for _, d in deltas:
        cur += d
        peak = max(peak, cur)
    return float(peak)


def time_step(fn: Callable[[], None], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_fn(module: torch.nn.Module, x: torch.Tensor, kind: str) -> Callable[[], None]:
    def step() -> None:
        xi = x.detach().requires_grad_(True)
        out = module(xi)
        loss = out[0].sum()
        if kind == "vq":
            loss = loss + out[2]
        loss.backward()
        for p in module.parameters():
            p.grad = None

    return step


def compare(
    name: str, ours: torch.nn.Module, peer: torch.nn.Module, x: torch.Tensor, kind: str, repeats: int
):
    rows = {}
    for who, mod in (("ours", ours), ("peer", peer)):
        fn = step_fn(mod, x, kind)
        rows[who] = (time_step(fn, repeats), peak_tensor_memory(fn))
    (to, mo), (tp, mp) = rows["ours"], rows["peer"]
    print(
        f"{name:<44s} ours {to * 1e3:8.2f} ms {mo / 2**20:8.1f} MiB | peer {tp * 1e3:8.2f} ms "
        f"{mp / 2**20:8.1f} MiB | peer/ours time {tp / to:5.2f}x memory {mp / max(mo, 1):5.2f}x"
    )
    return tp / to, mp / max(mo, 1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per configuration")
    args = parser.parse_args()
    try:
        import vector_quantize_pytorch as vqp
    except ImportError:
        print("vector-quantize-pytorch is not installed (pip install 'kexue[bench]'); nothing to compare.")
        return 0
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    quick = args.quick
    repeats = args.repeats or (3 if quick else 10)
    b, n = (8, 256) if quick else (64, 1024)
    print(f"torch {torch.__version__}, vector-quantize-pytorch {_version()}, threads {args.threads}")

    print("\n== numeric agreement ==")
    for levels in ([8, 5, 5, 5], [8, 8, 8, 5, 5, 5], [8, 6, 5]):
        z = torch.randn(b, n, len(levels)) * 3
        p_codes, p_idx = vqp.FSQ(levels)(z)
        o_codes, o_idx = FSQ(levels, eps=-1e-3)(z)
        _, paper_idx = FSQ(levels)(z)
        same = float(((o_idx == p_idx.long()) & (o_codes == p_codes).all(-1)).float().mean())
        paper = float((paper_idx == p_idx.long()).float().mean())
        print(
            f"FSQ {levels}: codes+indices equal to peer (eps=-1e-3) on {100 * same:.3f}% of {z.shape[0] * n} "
            f"vectors; paper bound (1 - eps) agrees on {100 * paper:.2f}%"
        )
    z = torch.randn(b, n, 4) * 3
    p_codes, p_idx = vqp.FSQ([8, 5, 5, 5], preserve_symmetry=True)(z / 2)
    o_codes, o_idx = FSQ([8, 5, 5, 5], bound="sigmoid")(z)
    print(
        f"FSQ sigmoid variant vs peer preserve_symmetry(z/2): indices equal on "
        f"{100 * float((o_idx == p_idx.long()).float().mean()):.3f}%, max |code diff| "
        f"{float((o_codes - p_codes).abs().max()):.1e}"
    )
    _agreement_vq(vqp, quick)

    print("\n== forward + backward per step ==")
    ratios = []
    for levels in ([8, 5, 5, 5], [8, 8, 8, 5, 5, 5]):
        x = torch.randn(b, n, len(levels))
        ratios.append(
            compare(f"FSQ {levels} (b={b}, n={n})", FSQ(levels), vqp.FSQ(levels), x, "fsq", repeats)
        )
    vb, vn, d, k = (4, 256, 64, 512) if quick else (32, 1024, 256, 1024)
    x = torch.randn(vb, vn, d)
    for rot in (True, False):
        ours = VectorQuantizer(d, k, grad="rotation" if rot else "ste", ema_decay=0.8, commitment_weight=1.0)
        peer = vqp.VectorQuantize(
            dim=d, codebook_size=k, decay=0.8, commitment_weight=1.0, rotation_trick=rot
        )
        with torch.no_grad():
            ours.embed.copy_(peer._codebook.embed[0])
            ours.ema_embed_sum.copy_(peer._codebook.embed_avg[0])
        name = f"VQ EMA 0.8 {'rotation' if rot else 'STE'} (b={vb}, n={vn}, d={d}, K={k})"
        ratios.append(compare(name, ours.train(), peer.train(), x, "vq", repeats))
    sb, sn, sd, sk = (1, 256, 32, 4096) if quick else (4, 256, 128, 65536)
    x = torch.randn(sb, sn, sd)
    peer = vqp.SimVQ(dim=sd, codebook_size=sk, rotation_trick=True)
    ours = VectorQuantizer(sd, sk, grad="rotation", codebook="linear")
    name = f"SimVQ rotation (b={sb}, n={sn}, d={sd}, K={sk})"
    ratios.append(compare(name, ours.train(), peer.train(), x, "vq", repeats))
    worst_t = min(r[0] for r in ratios)
    worst_m = min(r[1] for r in ratios)
    print(
        f"\nworst peer/ours ratio: time {worst_t:.2f}x, memory {worst_m:.2f}x (>= 1 means ours is no worse)"
    )
    return 0


def _agreement_vq(vqp, quick: bool) -> None:
    from vector_quantize_pytorch.vector_quantize_pytorch import rotate_to

    d, k = (32, 256) if quick else (256, 1024)
    peer = vqp.VectorQuantize(dim=d, codebook_size=k, rotation_trick=True, ema_update=False).train()
    ours = VectorQuantizer(d, k, grad="rotation", ema_decay=0.8).eval()  # eval: no EMA step, like the peer
    with torch.no_grad():
        ours.embed.copy_(peer._codebook.embed[0])
    x = torch.randn(4, 512, d)
    up = torch.randn_like(x)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    qa, ia, _ = ours(xa)
    qb, ib, _ = peer(xb)
    ((qa * up).sum()).backward()
    ((qb * up).sum()).backward()
    rel = float((xa.grad - xb.grad).norm() / xb.grad.norm())
    print(
        f"VQ rotation (d={d}, K={k}): indices equal {100 * float((ia == ib).float().mean()):.2f}%, "
        f"max |output diff| {float((qa - qb).detach().abs().max()):.1e}, encoder-gradient rel. diff {rel:.1e}"
    )
    z, q, g = torch.randn(4096, d), torch.randn(4096, d), torch.randn(4096, d)
    from kexue.quantizers import rotation_trick

    za, zb = z.clone().requires_grad_(True), z.clone().requires_grad_(True)
    (rotation_trick(za, q) * g).sum().backward()
    (rotate_to(zb, q) * g).sum().backward()
    print(
        f"rotation_trick vs peer rotate_to: gradient rel. diff {float((za.grad - zb.grad).norm() / zb.grad.norm()):.1e}"
    )
    sd, sk = (32, 1024) if quick else (128, 8192)
    peer = vqp.SimVQ(dim=sd, codebook_size=sk, rotation_trick=True)
    ours = VectorQuantizer(sd, sk, grad="rotation", codebook="linear")
    with torch.no_grad():
        ours.basis.copy_(peer.frozen_codebook)
        ours.transform.weight.copy_(peer.code_transform.weight)
    x = torch.randn(2, 512, sd)
    qa, ia, la = ours(x)
    qb, ib, lb = peer(x)
    print(
        f"SimVQ (d={sd}, K={sk}): indices equal {100 * float((ia == ib).float().mean()):.2f}%, max |output diff| "
        f"{float((qa - qb).abs().max()):.1e}, loss {float(la.detach()):.6f} vs {float(lb.detach()):.6f}"
    )


def _version() -> str:
    from importlib.metadata import version

    return version("vector-quantize-pytorch")


if __name__ == "__main__":
    sys.exit(main())

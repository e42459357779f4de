"""Attention benchmark: kexue.nn.attention versus torch's scaled_dot_product_attention, the ReRoPE
inference overhead versus plain RoPE, and RoPE scaling frequencies versus HF transformers.

    python benchmarks/attention.py [--quick]

Prints absolute times (median of repeats, forward + backward where stated), peak-allocation figures
from the torch profiler, and ratios (ours / peer: below 1 means we are faster or smaller).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kexue.nn.attention import causal_attention
from kexue.nn.rope import RopeScaling, apply_rotary, rope_cos_sin, rope_inv_freq


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def allocated_bytes(fn: Callable[[], object]) -> int:
    """Total bytes allocated by CPU ops during ``fn`` (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(max(0, e.cpu_memory_usage) for e in prof.events())


def fwd_bwd(
    attn: Callable[..., torch.Tensor], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
) -> Callable[[], None]:
    def step() -> None:
        qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
        attn(qq, kk, vv).sum().backward()

    return step


def plain_path(b: int, h: int, t: int, d: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
    ours = fwd_bwd(lambda a, b_, c: causal_attention(a, b_, c), q, k, v)
    peer = fwd_bwd(lambda a, b_, c: F.scaled_dot_product_attention(a, b_, c, is_causal=True), q, k, v)
    t_ours, t_peer = timeit(ours, repeats), timeit(peer, repeats)
    m_ours, m_peer = allocated_bytes(ours), allocated_bytes(peer)
    print(f"plain causal attention fwd+bwd  B={b} H={h} T={t} d={d}")
    print(
        f"  ours {t_ours * 1e3:8.2f} ms  {m_ours / 2**20:7.1f} MiB   torch SDPA {t_peer * 1e3:8.2f} ms  {m_peer / 2**20:7.1f} MiB"
    )
    print(
        f"  ours/peer time {t_ours / t_peer:.3f}   memory {m_ours / max(m_peer, 1):.3f}   (target time <= 1.1)"
    )


def rope_path(b: int, h: int, t: int, d: int, repeats: int) -> None:
    try:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb
    except ImportError:
        print("RoPE attention vs transformers: skipped (transformers is not installed)")
        return
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
    inv = rope_inv_freq(d, 10000.0, torch.float64)
    pos = torch.arange(t)

    def hf(a: torch.Tensor, b_: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        freqs = pos[None, :, None].float() * inv.float()[None, None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        qr, kr = apply_rotary_pos_emb(a, b_, emb.cos(), emb.sin())
        return F.scaled_dot_product_attention(qr, kr, c, is_causal=True)

    ours = fwd_bwd(lambda a, b_, c: causal_attention(a, b_, c, inv_freq=inv), q, k, v)
    peer = fwd_bwd(hf, q, k, v)
    t_ours, t_peer = timeit(ours, repeats), timeit(peer, repeats)
    print(f"RoPE causal attention fwd+bwd (float64 angles here, float32 in transformers)  T={t}")
    print(f"  ours {t_ours * 1e3:8.2f} ms   transformers apply_rotary_pos_emb + SDPA {t_peer * 1e3:8.2f} ms")
    print(f"  ours/peer time {t_ours / t_peer:.3f}")


def _rerope_row(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inv: torch.Tensor, repeats: int) -> None:
    t = q.shape[-2]
    w = max(1, t // 8)
    with torch.no_grad():
        t_rope = timeit(lambda: causal_attention(q, k, v, inv_freq=inv), repeats)
        t_re = timeit(lambda: causal_attention(q, k, v, inv_freq=inv, rerope_window=w), repeats)
        t_leaky = timeit(
            lambda: causal_attention(q, k, v, inv_freq=inv, rerope_window=w, leaky_factor=8.0), repeats
        )
        # decoding: one new query against T cached keys; plain RoPE can cache rotated keys
        kr = apply_rotary(k, *rope_cos_sin(torch.arange(t), inv, k.dtype))
        qr = apply_rotary(q[..., -1:, :], *rope_cos_sin(torch.tensor([t - 1]), inv, q.dtype))
        t_dec_rope = timeit(lambda: F.scaled_dot_product_attention(qr, kr, v), repeats)
        t_dec_re = timeit(
            lambda: causal_attention(q[..., -1:, :], k, v, inv_freq=inv, rerope_window=w), repeats
        )
        # our plain-RoPE decode also re-rotates the raw cached keys (exact under any frequency change)
        t_dec_raw = timeit(lambda: causal_attention(q[..., -1:, :], k, v, inv_freq=inv), repeats)
    print(
        f"  T={t:5d} prefill: RoPE {t_rope * 1e3:8.2f} ms  ReRoPE {t_re * 1e3:8.2f} ms ({t_re / t_rope:.2f}x)  "
        f"Leaky {t_leaky * 1e3:8.2f} ms ({t_leaky / t_rope:.2f}x)\n"
        f"          decode step: RoPE, rotated cache {t_dec_rope * 1e3:6.3f} ms  ReRoPE {t_dec_re * 1e3:6.3f} ms "
        f"({t_dec_re / t_dec_rope:.2f}x); RoPE re-rotating its raw cache {t_dec_raw * 1e3:6.3f} ms "
        f"(ReRoPE {t_dec_re / t_dec_raw:.2f}x of it)"
    )


def rerope_overhead(b: int, h: int, lengths: list[int], d: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(2)
    inv = rope_inv_freq(d, 10000.0, torch.float64)
    print("ReRoPE inference overhead (forward only), window = T/8")
    for t in lengths:
        q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
        _rerope_row(q, k, v, inv, repeats)


def frequencies_vs_transformers() -> None:
    try:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        print("RoPE scaling vs transformers: skipped (transformers is not installed)")
        return
    cases = [
        ({"rope_type": "linear", "factor": 4.0}, None),
        ({"rope_type": "dynamic", "factor": 2.0}, 3000),
        ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 1024}, None),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 1024,
            },
            None,
        ),
    ]
    print("RoPE scaling frequencies vs transformers.modeling_rope_utils (head dim 128, base 5e5)")
    for params, seq_len in cases:
        cfg = LlamaConfig(
            hidden_size=1024,
            num_attention_heads=8,
            head_dim=128,
            max_position_embeddings=2048,
            rope_parameters={"rope_theta": 500000.0, **params},
        )
        theirs, att = ROPE_INIT_FUNCTIONS[params["rope_type"]](cfg, "cpu", seq_len=seq_len)
        ours = RopeScaling.from_hf(params, max_position_embeddings=2048)
        mine = ours.inv_freq(128, 500000.0, seq_len=seq_len)
        rel = float(((mine - theirs.double()) / theirs.double()).abs().max())
        print(
            f"  {params['rope_type']:8s} max relative difference {rel:.2e} (float32 in transformers); "
            f"logit scale ours {ours.logit_scale:.6f} vs attention_factor^2 {att**2:.6f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="seconds-long run with small inputs")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if args.quick:
        plain_path(2, 4, 256, 64, 5)
        rope_path(2, 4, 256, 64, 5)
        rerope_overhead(1, 4, [256, 512], 64, 3)
    else:
        plain_path(4, 8, 1024, 64, 10)
        rope_path(4, 8, 1024, 64, 10)
        rerope_overhead(1, 8, [512, 1024, 2048, 4096], 64, 5)
    frequencies_vs_transformers()


if __name__ == "__main__":
    main()

"""Decode step time and KV-cache memory of kexue's MHA / GQA / MQA / MLA, and MLA against transformers.

Part 1 (kexue only): one decode step (batch ``--batch``, one new token) after ``T`` cached tokens, for MHA,
GQA, MQA and MLA's three paths (naive expanded cache, latent cache re-expanded every step, absorbed), with
the cache bytes at ``T`` (float32). Part 2 (peer): ``transformers``' ``DeepseekV2Attention`` built offline from
a tiny random ``DeepseekV2Config`` with kexue's MLA weights copied in (RoPE rows permuted to its interleaved
pair layout); first checks that both give the same outputs on prefill and on a cached decode step, then
times decode steps and compares cache memory, printing peer/ours ratios. Best of ``--reps`` steps.
Run: ``python benchmarks/kv_attention.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from kexue.nn.kv_attention import AttentionConfig, MultiHeadLatentAttention, build_attention

D_MODEL, HEADS, HEAD_DIM, KV_RANK, Q_RANK, ROPE_DIM = 512, 8, 64, 256, 384, 32


def configs() -> dict[str, tuple[AttentionConfig, str | None]]:
    mla = AttentionConfig("mla", D_MODEL, HEADS, HEAD_DIM, kv_rank=KV_RANK, q_rank=Q_RANK, rope_dim=ROPE_DIM)
    return {
        "MHA (h=8)": (AttentionConfig("mha", D_MODEL, HEADS, HEAD_DIM), None),
        "GQA (g=2)": (AttentionConfig("gqa", D_MODEL, HEADS, HEAD_DIM, n_kv_heads=2), None),
        "MQA": (AttentionConfig("mqa", D_MODEL, HEADS, HEAD_DIM), None),
        "MLA naive": (mla, "naive"),
        "MLA latent": (mla, "latent"),
        "MLA absorb": (mla, "absorb"),
    }


def _fill(attn, cache, t: int, batch: int, gen: torch.Generator) -> None:
    """Put ``t`` tokens' worth of cache entries in (what a prefill stores; values do not affect timing)."""
    c = attn.config
    if c.kind != "mla":
        cache.append(
            torch.randn(batch, c.groups, t, c.head_dim, generator=gen),
            torch.randn(batch, c.groups, t, c.v_head_dim, generator=gen),
        )
        return
    lat, r = attn.latents(torch.randn(batch, t, c.d_model, generator=gen), torch.arange(t))
    if isinstance(cache, type(attn.new_cache(1, impl="naive"))):
        cache.append(*attn.expand(lat, r))
    else:
        cache.append(lat, r)


@torch.no_grad()
def time_steps(step, reps: int) -> float:
    step()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def bench_ours(lengths: list[int], batch: int, reps: int) -> None:
    print(
        f"\nkexue decode step, batch {batch}, d={D_MODEL}, h={HEADS}, d_k=d_v={HEAD_DIM}; MLA d_c={KV_RANK}, "
        f"d_r={ROPE_DIM}; float32, best of {reps}"
    )
    print(f"  {'variant':12s} {'elem/token':>10s} " + " ".join(f"{'T=' + str(t):>22s}" for t in lengths))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, D_MODEL, generator=gen)
    base: dict[int, float] = {}
    for name, (cfg, impl) in configs().items():
        torch.manual_seed(0)
        attn = build_attention(cfg).eval()
        kw = {} if impl is None else {"impl": impl}
        cells = []
        for t in lengths:
            cache = attn.new_cache(batch, capacity=t + reps + 2, **kw)
            _fill(attn, cache, t, batch, gen)
            mb = cache.nbytes() / 2**20
            sec = time_steps(lambda attn=attn, cache=cache, kw=kw: attn(x, cache, **kw), reps)
            base.setdefault(t, sec)
            cells.append(f"{sec * 1e3:7.2f} ms {mb:7.1f} MiB")
        print(f"  {name:12s} {cfg.cache_elements(impl):10d} " + " ".join(f"{c:>22s}" for c in cells))


# --- the peer: transformers' DeepSeek-V2 attention ------------------------------------------------


def _rope_perm(d: int) -> torch.Tensor:
    """Row order taking kexue's half-split RoPE layout (i, i + d/2) to interleaved pairs (2i, 2i + 1)."""
    return torch.stack([torch.arange(d // 2), torch.arange(d // 2) + d // 2], dim=-1).flatten()


def hf_attention(ours: MultiHeadLatentAttention):
    from transformers import DeepseekV2Config
    from transformers.models.deepseek_v2.modeling_deepseek_v2 import (
        DeepseekV2Attention,
        DeepseekV2RotaryEmbedding,
    )

    c = ours.config
    cfg = DeepseekV2Config(
        vocab_size=32,
        hidden_size=c.d_model,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=c.n_heads,
        num_key_value_heads=c.n_heads,
        kv_lora_rank=c.kv_rank,
        q_lora_rank=c.q_rank,
        qk_nope_head_dim=c.head_dim,
        qk_rope_head_dim=c.rope_dim,
        v_head_dim=c.v_head_dim,
        max_position_embeddings=1 << 16,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
        n_routed_experts=2,
        num_experts_per_tok=1,
        moe_intermediate_size=16,
    )
    cfg._attn_implementation = "eager"
    hf = DeepseekV2Attention(cfg, layer_idx=0).eval()
    h, dk, dv, dr, dc = c.n_heads, c.head_dim, c.v_head_dim, c.rope_dim, c.kv_rank
    perm = _rope_perm(dr)
    with torch.no_grad():
        q_in = ours.w_uq.weight.shape[1]
        q = torch.cat(
            [ours.w_uq.weight.view(h, dk, q_in), ours.w_qr.weight.view(h, dr, q_in)[:, perm]], dim=1
        )
        if c.q_rank is None:
            hf.q_proj.weight.copy_(q.reshape(-1, q_in))
        else:
            hf.q_a_proj.weight.copy_(ours.w_dq.weight)
            hf.q_a_layernorm.weight.copy_(ours.q_norm.weight)
            hf.q_b_proj.weight.copy_(q.reshape(-1, q_in))
        hf.kv_a_proj_with_mqa.weight.copy_(torch.cat([ours.w_dkv.weight, ours.w_kr.weight[perm]], dim=0))
        hf.kv_a_layernorm.weight.copy_(ours.kv_norm.weight)
        kv = torch.cat([ours.w_uk.weight.view(h, dk, dc), ours.w_uv.weight.view(h, dv, dc)], dim=1)
        hf.kv_b_proj.weight.copy_(kv.reshape(-1, dc))
        hf.o_proj.weight.copy_(ours.w_o.weight)
    return cfg, hf, DeepseekV2RotaryEmbedding(cfg)


@torch.no_grad()
def bench_peer(lengths: list[int], batch: int, reps: int) -> None:
    try:
        import transformers
        from transformers import DynamicCache
    except ImportError:
        print(
            "\ntransformers is not installed (pip install -e '.[bench]'): skipping the DeepSeek-V2 comparison"
        )
        return
    torch.manual_seed(0)
    ours = MultiHeadLatentAttention(
        D_MODEL, HEADS, KV_RANK, q_rank=Q_RANK, head_dim=HEAD_DIM, rope_dim=ROPE_DIM
    ).eval()
    cfg, hf, rot = hf_attention(ours)
    gen = torch.Generator().manual_seed(1)

    # correctness first: prefill with a causal mask, then one cached decode step
    t0 = 12
    x = torch.randn(batch, t0 + 1, D_MODEL, generator=gen)
    mask = torch.full((t0, t0), float("-inf")).triu(1)[None, None]
    pos = torch.arange(t0 + 1)[None]
    cache = DynamicCache(config=cfg)
    hf_pre, _ = hf(
        x[:, :t0], attention_mask=mask, past_key_values=cache, position_embeddings=rot(x, pos[:, :t0])
    )
    hf_dec, _ = hf(
        x[:, t0:], attention_mask=None, past_key_values=cache, position_embeddings=rot(x, pos[:, t0:])
    )
    ours_cache = ours.new_cache(batch, impl="absorb")
    diff_pre = (ours(x[:, :t0], ours_cache) - hf_pre).abs().max().item()
    diff_dec = (ours(x[:, t0:], ours_cache) - hf_dec).abs().max().item()
    print(
        f"\ntransformers {transformers.__version__} DeepseekV2Attention (eager) vs kexue MLA, same weights: "
        f"max |diff| prefill {diff_pre:.2e}, cached decode {diff_dec:.2e} (float32)"
    )
    if max(diff_pre, diff_dec) > 1e-3:
        print("  outputs differ: the timing comparison below would not be like for like; stopping")
        return

    print(f"decode step, batch {batch}; ratios are peer/ours (> 1: kexue faster or smaller)")
    print(
        f"  {'T':>6s} {'HF ms':>8s} {'latent ms':>10s} {'absorb ms':>10s} {'HF/latent':>10s} {'HF/absorb':>10s}"
        f" {'HF MiB':>8s} {'ours MiB':>9s} {'mem ratio':>9s}"
    )
    xs = torch.randn(batch, 1, D_MODEL, generator=gen)
    for t in lengths:
        lat, r = ours.latents(torch.randn(batch, t, D_MODEL, generator=gen), torch.arange(t))
        hf_cache = DynamicCache(config=cfg)
        hf_cache.update(lat[:, None].contiguous(), r[..., _rope_perm(ROPE_DIM)][:, None].contiguous(), 0)

        def hf_step(cache=hf_cache) -> None:
            p = torch.tensor([[cache.get_seq_length()]])
            hf(xs, attention_mask=None, past_key_values=cache, position_embeddings=rot(xs, p))

        hf_sec = time_steps(hf_step, reps)
        layer = hf_cache.layers[0]
        hf_bytes = (layer.keys.numel() + layer.values.numel()) * 4
        ours_sec, ours_bytes = {}, 0
        for impl in ("latent", "absorb"):
            cache = ours.new_cache(batch, capacity=t + reps + 2, impl=impl)
            cache.append(lat, r)
            ours_sec[impl] = time_steps(lambda cache=cache, impl=impl: ours(xs, cache, impl=impl), reps)
            ours_bytes = cache.nbytes()  # same number of tokens as the HF cache holds now
        print(
            f"  {t:6d} {hf_sec * 1e3:8.2f} {ours_sec['latent'] * 1e3:10.2f} {ours_sec['absorb'] * 1e3:10.2f} "
            f"{hf_sec / ours_sec['latent']:9.2f}x {hf_sec / ours_sec['absorb']:9.2f}x "
            f"{hf_bytes / 2**20:8.2f} {ours_bytes / 2**20:9.2f} {hf_bytes / ours_bytes:8.2f}x"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="T in {256, 1024}, batch 2, 3 reps")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.batch, args.reps = [256, 1024], 2, 3
    if min(args.lengths) < 1 or args.batch < 1 or args.reps < 1:
        ap.error("--lengths, --batch and --reps must be >= 1")
    bench_ours(args.lengths, args.batch, args.reps)
    bench_peer(args.lengths, args.batch, args.reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())

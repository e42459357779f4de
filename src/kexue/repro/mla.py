"""Reproduction: KV-cache versus quality — MHA, MQA, GQA and MLA (kexue.fm/archives/10091).

Checks, on random weights and exact shapes: (1) MLA's absorbed "MQA form" equals its "MHA form" (prefill and
token-by-token decoding, float64 / float32; bfloat16 reported); (2) without the decoupled RoPE part the
absorption breaks (negative control); (3) the per-token cache sizes for DeepSeek-V2's shapes (MHA 32,768,
GQA-8 2,048, MQA 256, MLA 576 elements; 56.9x; 69,120 bytes over 60 layers in bf16) and LLaMA2's; (4) the
real cache tensors after decoding 100 tokens equal 100 x the formula; (5) decode step time of the absorbed
path against the naive (expanded-cache) path and the latent re-expansion path at long contexts. Full mode
adds a small LM comparison (MHA / GQA / MQA / MLA, validation loss and cache bytes per token; informational).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from kexue.nn.blocks import TinyLM
from kexue.nn.kv_attention import (
    MLA_IMPLS,
    AttentionConfig,
    MultiHeadLatentAttention,
    build_attention,
    cache_size,
)
from kexue.nn.rope import apply_rope, rope_inv_freq
from kexue.repro._tinylm import byte_split, eval_loss, fixed_windows, train_lm
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="mla",
    title="KV-cache versus quality: from MHA, MQA, GQA to MLA",
    title_zh="缓存与效果的极限拉扯：从MHA、MQA、GQA到MLA",
    url="https://kexue.fm/archives/10091",
    date="2024-05-13",
    claim=(
        "MLA caches one low-rank latent plus a small shared RoPE key per token (576 elements for DeepSeek-V2 "
        "versus 32,768 for MHA) and, thanks to the decoupled RoPE part, its absorbed MQA-style decoding is "
        "exactly equal to the MHA-style computation."
    ),
)

# DeepSeek-V2 (post + public config): d = 5120, h = 128, d_k = d_v = 128, d_c = 512, d_c' = 1536, d_r = 64.
DEEPSEEK_V2 = {
    "MHA (h=128)": AttentionConfig("mha", 5120, 128, 128),
    "GQA (g=8)": AttentionConfig("gqa", 5120, 128, 128, n_kv_heads=8),
    "MQA": AttentionConfig("mqa", 5120, 128, 128),
    "MLA (d_c=512, d_r=64)": AttentionConfig("mla", 5120, 128, 128, kv_rank=512, q_rank=1536, rope_dim=64),
}
EXPECTED_ELEMENTS = {"MHA (h=128)": 32768, "GQA (g=8)": 2048, "MQA": 256, "MLA (d_c=512, d_r=64)": 576}
LLAMA2 = {
    "LLaMA2-7B MHA": (AttentionConfig("mha", 4096, 32, 128), 2 * 32 * 128, 32),
    "LLaMA2-70B GQA-8": (AttentionConfig("gqa", 8192, 64, 128, n_kv_heads=8), 2 * 8 * 128, 80),
}


def _mla(q_rank: int | None, rope_dim: int = 8, seed: int = 0) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(64, 4, 24, q_rank=q_rank, head_dim=16, rope_dim=rope_dim).double().eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


@torch.no_grad()
def equivalence(seed: int) -> dict[str, float]:
    """Max |absorbed - naive| over T in {1, 7, 33}, B in {1, 3}, with/without query compression."""
    out = {"prefill_f64": 0.0, "decode_f64": 0.0, "prefill_f32": 0.0, "decode_f32": 0.0, "scale": 0.0}
    gen = torch.Generator().manual_seed(seed)
    for q_rank in (None, 32):
        m = _mla(q_rank, seed=seed)
        for b in (1, 3):
            for t in (1, 7, 33):
                x = torch.randn(b, t, 64, generator=gen, dtype=torch.float64)
                for dt, tag in ((torch.float64, "f64"), (torch.float32, "f32")):
                    mm, xx = m.to(dt), x.to(dt)
                    ref = mm(xx, impl="naive")
                    out["scale"] = max(out["scale"], float(ref.abs().max()))
                    out[f"prefill_{tag}"] = max(out[f"prefill_{tag}"], _max_diff(mm(xx, impl="absorb"), ref))
                    cache = mm.new_cache(b, impl="absorb")
                    p = min(3, t)
                    rows = [mm(xx[:, :p], cache, impl="absorb")]
                    rows += [mm(xx[:, i : i + 1], cache, impl="absorb") for i in range(p, t)]
                    out[f"decode_{tag}"] = max(out[f"decode_{tag}"], _max_diff(torch.cat(rows, 1), ref))
    # bfloat16 (reported): the post notes precision loss after merging
    m = _mla(None, seed=seed).to(torch.bfloat16)
    x = torch.randn(2, 7, 64, generator=gen).to(torch.bfloat16)
    out["prefill_bf16"] = _max_diff(m(x, impl="absorb"), m(x, impl="naive"))
    return out


@torch.no_grad()
def coupled_rope_gap(seed: int) -> tuple[float, float]:
    """(gap with RoPE on the whole latent key, gap with no RoPE at all) between absorbed and naive.

    The first is the negative control: RoPE applied to ``k = c W_kc`` and ``q_c`` (no decoupled part), then
    absorbed anyway; the rotation ``R_{t-j}`` sits between ``W_qc`` and ``W_kc^T`` so the forms differ.
    """
    m = _mla(None, rope_dim=0, seed=seed)
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    pos = torch.arange(9)
    inv = rope_inv_freq(16, 10000.0, torch.float64)
    qc, _ = m.queries(x, pos)
    lat, r = m.latents(x, pos)
    k, v = m.expand(lat, r)
    qc, k = apply_rope(qc, pos, inv), apply_rope(k, pos, inv)
    s = (qc @ k.transpose(-1, -2)) * m.scale
    s = s.masked_fill(torch.ones(9, 9, dtype=torch.bool).triu(1), float("-inf"))
    o = s.softmax(-1) @ v
    coupled = m.w_o(o.transpose(1, 2).reshape(2, 9, -1))
    gap = _max_diff(m(x, impl="absorb"), coupled)
    return gap, _max_diff(m(x, impl="absorb"), m(x, impl="naive"))


def cache_table() -> tuple[Table, dict[str, float]]:
    rows, metrics = [], {}
    mha = cache_size(DEEPSEEK_V2["MHA (h=128)"]).elements
    for name, cfg in DEEPSEEK_V2.items():
        cs, cs60 = cache_size(cfg), cache_size(cfg, n_layers=60)
        rows.append([name, cs.elements, cs.bytes, cs60.elements, cs60.bytes, round(mha / cs.elements, 2)])
        metrics[f"deepseek_v2_{cfg.kind}_elements"] = cs.elements
    mla = DEEPSEEK_V2["MLA (d_c=512, d_r=64)"]
    naive = cache_size(mla, impl="naive").elements
    rows.append(
        ["MLA, naive expanded cache", naive, naive * 2, naive * 60, naive * 120, round(mha / naive, 2)]
    )
    for name, (cfg, _, layers) in LLAMA2.items():
        cs = cache_size(cfg, n_layers=layers)
        rows.append([name, cfg.cache_elements(), 2 * cfg.cache_elements(), cs.elements, cs.bytes, "-"])
    table = Table(
        [
            "attention",
            "elements/token/layer",
            "bytes (bf16)",
            "elements x layers",
            "bytes x layers (bf16)",
            "MHA / this",
        ],
        rows,
        caption="KV cache per token: DeepSeek-V2 shapes (d=5120, h=128, d_k=d_v=128; 60 layers) and LLaMA2 "
        "(7B: 32 layers, 70B: 80 layers).",
    )
    return table, metrics


@torch.no_grad()
def measured_cache(seed: int, steps: int = 100, batch: int = 2) -> dict[str, tuple[int, int]]:
    """(measured elements, formula elements) after decoding ``steps`` tokens one by one."""
    torch.manual_seed(seed)
    cfgs = {
        "mha": AttentionConfig("mha", 64, 4, 16),
        "gqa": AttentionConfig("gqa", 64, 4, 16, n_kv_heads=2),
        "mqa": AttentionConfig("mqa", 64, 4, 16),
        "mla": AttentionConfig("mla", 64, 4, 16, kv_rank=24, q_rank=32, rope_dim=8),
    }
    out = {}
    x = torch.randn(batch, steps, 64, generator=torch.Generator().manual_seed(seed))
    for name, cfg in cfgs.items():
        attn = build_attention(cfg).eval()
        impls = ("naive", "absorb") if name == "mla" else (None,)
        for impl in impls:
            kw = {} if impl is None else {"impl": impl}
            cache = attn.new_cache(batch, **kw)
            for t in range(steps):
                attn(x[:, t : t + 1], cache, **kw)
            key = name if impl is None else f"mla_{impl}"
            out[key] = (cache.numel(), batch * steps * cfg.cache_elements(impl))
    return out


@torch.no_grad()
def decode_timing(lengths: tuple[int, ...], reps: int, seed: int) -> dict[str, dict[int, float]]:
    """Best-of-``reps`` seconds per decode step (batch 4) after ``T`` cached tokens, per MLA path."""
    torch.manual_seed(seed)
    m = MultiHeadLatentAttention(256, 16, 64, head_dim=32, rope_dim=16).eval()
    b = 4
    x = torch.randn(b, 1, 256)
    res: dict[str, dict[int, float]] = {impl: {} for impl in MLA_IMPLS}
    for t in track(lengths, "decode timing"):
        caches = {impl: m.new_cache(b, capacity=t + reps + 4, impl=impl) for impl in MLA_IMPLS}
        # fill the caches with what a prefill of T random tokens stores (attention itself is not needed)
        lat, r = m.latents(torch.randn(b, t, 256), torch.arange(t))
        for impl, cache in caches.items():
            if impl == "naive":
                cache.append(*m.expand(lat, r))
            else:
                cache.append(lat, r)
        times: dict[str, list[float]] = {impl: [] for impl in MLA_IMPLS}
        for _ in range(reps):  # interleave the paths so machine load hits them alike
            for impl, cache in caches.items():
                t0 = time.perf_counter()
                m(x, cache, impl=impl)
                times[impl].append(time.perf_counter() - t0)
        for impl in MLA_IMPLS:
            res[impl][t] = min(times[impl])
    return res


def lm_comparison(seed: int, steps: int) -> Table:
    train, val = byte_split(1_000_000)
    wins = fixed_windows(val, 32, 64)
    cfgs = {
        "MHA (h=4)": AttentionConfig("mha", 64, 4),
        "GQA (g=2)": AttentionConfig("gqa", 64, 4, n_kv_heads=2),
        "MQA": AttentionConfig("mqa", 64, 4),
        "MLA (d_c=32, d_r=8)": AttentionConfig("mla", 64, 4, 16, kv_rank=32, rope_dim=8),
    }
    rows = []
    for name, cfg in cfgs.items():
        torch.manual_seed(seed)
        model = TinyLM(256, 64, 4, 4, attention=cfg, embed_std=0.02)
        n_params = sum(p.numel() for p in model.parameters())
        train_lm(model, train, steps, batch=16, seq_len=64, lr=3e-3, warmup=100, seed=seed, description=name)
        rows.append(
            [name, n_params, round(eval_loss(model, wins), 4), cache_size(cfg, torch.float32).bytes * 4]
        )
    return Table(
        ["attention", "parameters", "validation loss (nats/byte)", "cache bytes/token (fp32, 4 layers)"],
        rows,
        caption=f"Tiny byte LM, 4 layers, d=64, {steps} steps (informational: the quality claim needs scale).",
    )


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()

    eq = equivalence(seed)
    result.metrics.update({f"absorb_vs_naive_{k}": v for k, v in eq.items() if k != "scale"})
    result.metrics["output_scale"] = eq["scale"]
    result.check_le("absorbed == naive, prefill (float64)", eq["prefill_f64"], 1e-10)
    result.check_le("absorbed token-by-token decode == naive full pass (float64)", eq["decode_f64"], 1e-10)
    result.check_le("absorbed == naive, prefill (float32)", eq["prefill_f32"], 1e-5)
    result.check_le("absorbed decode == naive (float32)", eq["decode_f32"], 1e-5)

    gap, no_rope_gap = coupled_rope_gap(seed)
    result.metrics["coupled_rope_gap"] = gap
    result.metrics["no_rope_gap"] = no_rope_gap
    result.check_ge("negative control: RoPE on the latent key breaks absorption", gap, 1e-3)
    result.check_le("d_r = 0 and no RoPE: absorbed == naive", no_rope_gap, 1e-10)

    table, metrics = cache_table()
    result.table = table
    result.metrics.update(metrics)
    for name, cfg in DEEPSEEK_V2.items():
        got = cache_size(cfg).elements
        result.check(
            f"cache elements {name} = {EXPECTED_ELEMENTS[name]}",
            got == EXPECTED_ELEMENTS[name],
            value=got,
            expected=EXPECTED_ELEMENTS[name],
        )
    mla_cfg = DEEPSEEK_V2["MLA (d_c=512, d_r=64)"]
    ratio = cache_size(DEEPSEEK_V2["MHA (h=128)"]).elements / cache_size(mla_cfg).elements
    result.metrics["mha_over_mla"] = ratio
    result.check("MHA / MLA = 56.9x", round(ratio, 1) == 56.9, value=ratio)
    groups = cache_size(mla_cfg).elements / (2 * 128)
    result.check("MLA cache = GQA with 2.25 groups", groups == 2.25, value=groups)
    cs60 = cache_size(mla_cfg, torch.bfloat16, n_layers=60)
    result.metrics["mla_60_layers_bytes_bf16"] = cs60.bytes
    result.check(
        "60 layers: 34,560 elements = 69,120 bytes (bf16)",
        (cs60.elements, cs60.bytes) == (34560, 69120),
        elements=cs60.elements,
        bytes=cs60.bytes,
    )
    for name, (cfg, want, _) in LLAMA2.items():
        result.check(
            f"{name}: {want} elements/token/layer",
            cfg.cache_elements() == want,
            value=cfg.cache_elements(),
            expected=want,
        )

    measured = measured_cache(seed)
    for name, (got, _) in measured.items():
        result.metrics[f"cache_after_100_{name}"] = got
    result.check(
        "cache tensors after 100 decoded tokens = 100 x formula (all variants)",
        all(g == w for g, w in measured.values()),
        **{f"{k}_measured": g for k, (g, _) in measured.items()},
    )

    lengths = (256, 2048) if mode == "quick" else (256, 1024, 2048, 4096, 8192)
    timing = decode_timing(lengths, reps=7 if mode == "quick" else 15, seed=seed)
    longest = lengths[-1]
    for impl in MLA_IMPLS:
        for t, s in timing[impl].items():
            result.metrics[f"decode_ms_{impl}_T{t}"] = s * 1e3
    speed_naive = timing["naive"][longest] / timing["absorb"][longest]
    speed_latent = timing["latent"][longest] / timing["absorb"][longest]
    result.metrics["naive_over_absorb_time"] = speed_naive
    result.metrics["latent_over_absorb_time"] = speed_latent
    # At T=2048 on a shared CPU the naive/absorbed ratio is 1.3-3x but scheduler noise can flip it, so
    # quick mode records it as a metric and only full mode (T=8192, measured 2.3x) checks it.
    if mode == "full":
        result.check_ge(
            f"absorbed decode faster than naive expanded cache at T={longest}",
            speed_naive,
            1.0,
            "step-time ratio naive/absorbed (CPU, batch 4, h=16, d_c=64; cache 16x smaller)",
        )
    result.check_ge(f"absorbed decode faster than latent re-expansion at T={longest}", speed_latent, 2.0)

    if mode == "full":
        result.tables.append(lm_comparison(seed, steps=400))

    _figures(result, out, timing)
    result.notes = (
        "transformers' DeepSeek-V2 attention (v5) caches the latent and re-expands it every step (the 'latent' "
        "path here); the absorbed path computes scores on d_c + d_r dimensions per head, so it does more "
        "FLOPs but reads a cache (d_c + d_r)/(h (d_k + d_r + d_v)) the size. Paper-level claims (93.3% smaller "
        "cache than DeepSeek 67B, 5.76x throughput) are cited, not reproduced."
    )
    return result


def _figures(result: Result, out: Path, timing: dict[str, dict[int, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    names = list(DEEPSEEK_V2) + ["MLA naive"]
    vals = [cache_size(c).elements for c in DEEPSEEK_V2.values()]
    vals.append(cache_size(DEEPSEEK_V2["MLA (d_c=512, d_r=64)"], impl="naive").elements)
    ax1.barh(names, vals, color=["C0", "C1", "C2", "C3", "C7"])
    ax1.set_xscale("log")
    ax1.set_xlabel("cache elements per token per layer")
    ax1.set_title("DeepSeek-V2 shapes")
    for i, v in enumerate(vals):
        ax1.text(v, i, f" {v:,}", va="center", fontsize=8)
    for impl, series in timing.items():
        ts = sorted(series)
        ax2.plot(ts, [series[t] * 1e3 for t in ts], "o-", label=impl)
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xlabel("cached tokens T")
    ax2.set_ylabel("ms per decode step")
    ax2.set_title("MLA decode (CPU, B=4, h=16, d_c=64)")
    ax2.legend()
    save_figure(fig, out, "mla_cache_and_decode.png", result)

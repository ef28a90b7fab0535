#!/usr/bin/env python3
"""parse_mail benchmark (not a test): throughput on the corpus against the stdlib, and memory on a big mail.

    .venv/bin/python bench/bench_parse.py [-n 500] [--seed 42] [--rounds 3] [--big-mib 18]

1. Generates the corpus with ../shared/bench/gen_corpus.py into bench/out/corpus-N-SEED (reused when present;
   git-ignored).  All message files are read into memory first: file I/O is not measured.
2. (a) stdlib baseline: email.message_from_bytes(raw, policy=email.policy.default) + get_body + get_content
   of the body + iter_attachments + get_content of each -- the floor any gateway pays;
   (b) gateway.mime.parse_mail; both in the same run, alternating, best of --rounds; ratio b/a.
3. Peak tracemalloc inside parse_mail (and inside the stdlib baseline) for a ~24 MB mail with one 18 MiB
   base64 attachment, built like tests/mails.py make_mail(attachments=[("big.bin", ...)]).
"""

from __future__ import annotations

import argparse
import email
import email.policy
import gc
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT.parent / "shared" / "bench" / "gen_corpus.py"
sys.path.insert(0, str(ROOT))

from gateway.mime import parse_mail  # noqa: E402


def stdlib_parse(raw: bytes) -> None:
    m = email.message_from_bytes(raw, policy=email.policy.default)
    b = m.get_body(preferencelist=("plain", "html"))
    if b is not None:
        b.get_content()
    for a in m.iter_attachments():
        a.get_content()


def corpus(n: int, seed: int) -> list[bytes]:
    out = ROOT / "bench" / "out" / f"corpus-{n}-{seed}"
    if not (out / "eml").is_dir():
        subprocess.run([sys.executable, str(GEN), str(out), "-n", str(n), "--seed", str(seed)], check=True)
    return [p.read_bytes() for p in sorted((out / "eml").iterdir())]


def timed(fn: Callable[[bytes], object], mails: list[bytes]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for raw in mails:
        fn(raw)
    return time.perf_counter() - t0


def big_mail(mib: int) -> bytes:
    sys.path.insert(0, str(ROOT / "tests"))
    from mails import make_mail

    return make_mail(attachments=[("big.bin", "application/octet-stream", os.urandom(mib * 2**20))])


def peak(fn: Callable[[bytes], object], raw: bytes) -> tuple[float, float]:
    """(peak tracemalloc MiB during fn(raw), seconds)."""
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    result = fn(raw)
    dt = time.perf_counter() - t0
    _, pk = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del result
    return pk / 2**20, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=18)
    args = ap.parse_args()

    mails = corpus(args.n, args.seed)
    total = sum(map(len, mails))
    print(f"corpus: {len(mails)} messages, {total / 2**20:.1f} MiB")
    best_a = best_b = float("inf")
    for r in range(args.rounds):
        a = timed(stdlib_parse, mails)
        b = timed(parse_mail, mails)
        best_a, best_b = min(best_a, a), min(best_b, b)
        print(f"  round {r + 1}: stdlib {len(mails) / a:7.1f} msg/s   parse_mail {len(mails) / b:7.1f} msg/s")
    ra, rb = len(mails) / best_a, len(mails) / best_b
    print(f"(a) stdlib policy.default parse+body+attachments: {ra:7.1f} msg/s ({total / 2**20 / best_a:.0f} MiB/s)")
    print(f"(b) gateway.mime.parse_mail:                     {rb:7.1f} msg/s ({total / 2**20 / best_b:.0f} MiB/s)")
    print(f"    ratio parse_mail / stdlib: {rb / ra:.2f}x")

    raw = big_mail(args.big_mib)
    size = len(raw) / 2**20
    pm_peak, pm_t = peak(parse_mail, raw)
    sl_peak, sl_t = peak(stdlib_parse, raw)
    print(f"big mail: {size:.1f} MiB ({args.big_mib} MiB base64 attachment)")
    print(f"    parse_mail: peak tracemalloc {pm_peak:6.1f} MiB ({pm_peak / size:.2f}x the mail), {pm_t:.2f} s")
    print(f"    stdlib:     peak tracemalloc {sl_peak:6.1f} MiB ({sl_peak / size:.2f}x the mail), {sl_t:.2f} s")


if __name__ == "__main__":
    main()

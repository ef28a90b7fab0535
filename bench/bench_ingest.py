#!/usr/bin/env python3
"""Ingest benchmark (issue 2): the whole pipeline vs the bare stdlib parse of the same corpus, same run.

    .venv/bin/python bench/bench_ingest.py [-n 5000] [--seed 42] [--pipe 200]

1. Generates the corpus with ../shared/bench/gen_corpus.py into bench/out/corpus-N (reused when present).
2. Baseline: a child process parses every message with stdlib email (policy.default: parse, get_body,
   iter_attachments, decode) -- the floor any gateway pays.
3. Gateway: `ticket-gateway ingest <Maildir-like dir>` in a child process (SQLite default, full pipeline,
   attachments written, everything committed).
4. Pipe mode: one `ticket-gateway ingest` process per mail (as an MTA pipe transport runs it), plus the bare
   interpreter start-up as its baseline.
Reports msg/s, peak RSS (ru_maxrss of each child), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT.parent / "shared" / "bench" / "gen_corpus.py"

BASELINE = r"""
import email, email.policy, sys, time
from pathlib import Path
files = sorted(Path(sys.argv[1]).iterdir())
t0 = time.perf_counter()
for f in files:
    m = email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
    b = m.get_body(preferencelist=("plain", "html"))
    if b is not None:
        b.get_content()
    for a in m.iter_attachments():
        a.get_content()
print(time.perf_counter() - t0)
"""


def child_run(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS MiB of the child, process)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, **kw)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr.decode()[-2000:]}")
    return wall, max(after, before) / 1024, p


def rss_of(cmd: list[str], **kw) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run a child under /usr/bin/time-like accounting: wait4 gives its own ru_maxrss."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = proc.communicate()
    _, status, ru = os.wait4(proc.pid, 0) if proc.returncode is None else (0, 0, None)
    wall = time.perf_counter() - t0
    p = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return wall, 0.0, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pipe", type=int, default=200, help="mails for the one-process-per-mail run")
    args = ap.parse_args()

    out = ROOT / "bench" / "out" / f"corpus-{args.n}-{args.seed}"
    if not (out / "eml").is_dir():
        print(f"generating {args.n} mails into {out} ...", flush=True)
        subprocess.run([sys.executable, str(GEN), str(out), "-n", str(args.n), "--seed", str(args.seed)], check=True)
    eml = out / "eml"
    files = sorted(eml.iterdir())
    n = len(files)
    size = sum(f.stat().st_size for f in files)
    print(f"corpus: {n} mails, {size / 2**20:.0f} MiB")
    py = sys.executable

    # warm the page cache so neither side pays the first read
    for f in files:
        f.read_bytes()

    # 1. baseline: bare stdlib parse
    wall, rss_base, p = child_run([py, "-c", BASELINE, str(eml)])
    parse_s = float(p.stdout.decode().strip())
    base_rate = n / parse_s

    # 2. the gateway: full pipeline, one process, SQLite default
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    cfg = work / "gateway.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{work / "var"}"\naddresses = ["support@helpdesk.example.com"]\n'
                   'unknown_senders = "register"\n')
    env = dict(os.environ, TICKET_GATEWAY_CONFIG=str(cfg))
    subprocess.run([py, "-m", "gateway", "db", "upgrade"], env=env, check=True, capture_output=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    p = subprocess.run([py, "-m", "gateway", "ingest", "-q", str(eml)], env=env, capture_output=True)
    gw_wall = time.perf_counter() - t0
    gw_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if p.returncode != 0:
        sys.exit(p.stderr.decode()[-3000:])
    gw_rate = n / gw_wall
    listing = subprocess.run([py, "-m", "gateway", "mail", "list", "--json"], env=env, capture_output=True)
    outcomes: dict[str, int] = {}
    for m in json.loads(listing.stdout):
        outcomes[m["outcome"]] = outcomes.get(m["outcome"], 0) + 1

    # 3. pipe mode: one process per mail, and the bare interpreter start as its floor
    k = min(args.pipe, n)
    t0 = time.perf_counter()
    for _ in range(20):
        subprocess.run([py, "-c", "pass"], check=True)
    bare_start = (time.perf_counter() - t0) / 20
    t0 = time.perf_counter()
    for _ in range(20):
        subprocess.run([py, "-m", "gateway", "--help"], check=True, capture_output=True)
    help_start = (time.perf_counter() - t0) / 20
    pipe_cfg = work / "pipe.toml"
    pipe_cfg.write_text(cfg.read_text().replace(str(work / "var"), str(work / "pipe-var")))
    penv = dict(os.environ, TICKET_GATEWAY_CONFIG=str(pipe_cfg))
    subprocess.run([py, "-m", "gateway", "db", "upgrade"], env=penv, check=True, capture_output=True)
    t0 = time.perf_counter()
    for f in files[:k]:
        with f.open("rb") as fh:
            r = subprocess.run([py, "-m", "gateway", "ingest", "-q"], stdin=fh, env=penv, capture_output=True)
        if r.returncode != 0:
            sys.exit(r.stderr.decode()[-2000:])
    pipe_per = (time.perf_counter() - t0) / k

    print()
    print(f"{'what':<46} {'msg/s':>9} {'peak RSS':>10}")
    print(f"{'stdlib email parse (baseline, same run)':<46} {base_rate:9.0f} {rss_base:8.0f} MiB")
    print(f"{'ticket-gateway ingest, full pipeline, SQLite':<46} {gw_rate:9.0f} {gw_rss:8.0f} MiB")
    print(f"ratio gateway/baseline: {gw_rate / base_rate:.2f} (target >= 0.80)")
    print(f"outcomes: {outcomes}")
    print()
    print(f"pipe mode, one process per mail ({k} mails): {pipe_per * 1000:.0f} ms/mail = {1 / pipe_per:.1f} msg/s")
    print(f"  interpreter start (python -c pass): {bare_start * 1000:.0f} ms; "
          f"`ticket-gateway --help`: {help_start * 1000:.0f} ms")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

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
Reports msg/s, peak RSS (each child's own ru_maxrss, from wait4), and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

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


LAST_CPU = [0.0]  # CPU seconds (user + system) of the last measured child, with the children it waited for


def measured(cmd: list[str], *, stdin: IO[bytes] | None = None,
             env: dict[str, str] | None = None) -> tuple[float, float, bytes]:
    """(wall seconds, the child's own peak RSS in MiB, stdout): fork/exec + os.wait4, so that the RSS is
    this child's and not the maximum over every child so far (what RUSAGE_CHILDREN reports). The child's CPU
    seconds (its own and its reaped children's, e.g. the parse-ahead worker) go to LAST_CPU."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None and proc.stderr is not None  # both PIPE
    # stderr is read beside stdout: a child writing more than a pipe's buffer to stderr (the INFO line per mail of
    # an import) would otherwise block on it while this process waits for its stdout to end -- forever
    errs: list[bytes] = []
    reader = threading.Thread(target=lambda: errs.append(proc.stderr.read()) if proc.stderr else None)
    reader.start()
    out = proc.stdout.read()
    reader.join()
    err = errs[0] if errs else b""
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    LAST_CPU[0] = ru.ru_utime + ru.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(map(str, cmd))}\n{err.decode()[-3000:]}")
    return wall, ru.ru_maxrss / 1024, out


# What an `ingest` process imports before it reads its mail (the CLI, the app with its features, the intake and
# every handler of the built-in pipeline): its start-up cost, without the database work.
IMPORTS = """
import gateway.cli, gateway.cli.ingest, gateway.app, gateway.intake
from gateway.pipeline import BUILTIN, load_handlers
load_handlers(BUILTIN)
import os; os._exit(0)  # as the CLI exits (gateway.cli.entry): no interpreter teardown
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--pipe", type=int, default=200, help="mails for the one-process-per-mail run")
    ap.add_argument("--no-compile", action="store_true",
                    help="pipe mode: do not byte-compile the package first (measure compiling from source too)")
    ap.add_argument("--sequential", action="store_true",
                    help="also run `ingest --no-parse-ahead` (one process) in the same run, for comparison")
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
    _, rss_base, out_base = measured([py, "-c", BASELINE, str(eml)])
    cpu_base = LAST_CPU[0]
    parse_s = float(out_base.decode().strip())
    base_rate = n / parse_s

    # 2. the gateway: full pipeline, one process, SQLite default
    work = Path(tempfile.mkdtemp(prefix="tg-bench-"))
    cfg = work / "gateway.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{work / "var"}"\naddresses = ["support@helpdesk.example.com"]\n'
                   'unknown_senders = "register"\n')
    env = dict(os.environ, TICKET_GATEWAY_CONFIG=str(cfg))
    subprocess.run([py, "-m", "gateway", "db", "upgrade"], env=env, check=True, capture_output=True)
    gw_wall, gw_rss, _ = measured([py, "-m", "gateway", "ingest", "-q", str(eml)], env=env)
    cpu_gw = LAST_CPU[0]
    gw_rate = n / gw_wall
    seq = None
    if args.sequential:
        scfg = work / "seq.toml"
        scfg.write_text(cfg.read_text().replace(str(work / "var"), str(work / "seq-var")))
        senv = dict(os.environ, TICKET_GATEWAY_CONFIG=str(scfg))
        subprocess.run([py, "-m", "gateway", "db", "upgrade"], env=senv, check=True, capture_output=True)
        s_wall, s_rss, _ = measured([py, "-m", "gateway", "ingest", "-q", "--no-parse-ahead", str(eml)], env=senv)
        seq = (n / s_wall, s_rss, LAST_CPU[0])
    listing = subprocess.run([py, "-m", "gateway", "mail", "list", "--json"], env=env, capture_output=True)
    outcomes: dict[str, int] = {}
    for m in json.loads(listing.stdout):
        outcomes[m["outcome"]] = outcomes.get(m["outcome"], 0) + 1

    # 3. pipe mode: one process per mail, and the bare interpreter start as its floor. The package is
    #    byte-compiled first, as `pip install` does for an installed gateway (an editable checkout run with
    #    PYTHONDONTWRITEBYTECODE would otherwise compile every module from source in every process).
    if not args.no_compile:
        subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "gateway"), str(ROOT / "handlers")], check=True,
                       capture_output=True)
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
    pipe_rss = 0.0
    for f in files[:k]:
        with f.open("rb") as fh:
            _, rss, _ = measured([py, "-m", "gateway", "ingest", "-q"], stdin=fh, env=penv)
        pipe_rss = max(pipe_rss, rss)
    pipe_per = (time.perf_counter() - t0) / k
    # start-up alone: the imports an `ingest` process makes before it reads the mail
    t0 = time.perf_counter()
    for _ in range(10):
        measured([py, "-c", IMPORTS], env=penv)
    import_start = (time.perf_counter() - t0) / 10

    print()
    print(f"{'what':<50} {'msg/s':>9} {'peak RSS':>10} {'CPU s':>8}")
    print(f"{'stdlib email parse (baseline, same run)':<50} {base_rate:9.0f} {rss_base:8.0f} MiB {cpu_base:8.1f}")
    print(f"{'ticket-gateway ingest, full pipeline, SQLite':<50} {gw_rate:9.0f} {gw_rss:8.0f} MiB {cpu_gw:8.1f}")
    if seq is not None:
        print(f"{'  the same with --no-parse-ahead (one process)':<50} {seq[0]:9.0f} {seq[1]:8.0f} MiB {seq[2]:8.1f}")
    print(f"ratio gateway/baseline: {gw_rate / base_rate:.2f} (target >= 0.80)"
          + (f"; one process: {seq[0] / base_rate:.2f}" if seq is not None else ""))
    print("  (CPU s: user + system of the child and of the processes it reaped: the gateway's parse-ahead worker "
          "counts; the baseline's CPU s covers its whole process, start-up and reading included)")
    print(f"outcomes: {outcomes}")
    print()
    print(f"pipe mode, one process per mail ({k} mails): {pipe_per * 1000:.0f} ms/mail = {1 / pipe_per:.1f} msg/s, "
          f"peak RSS {pipe_rss:.0f} MiB")
    print(f"  interpreter start (python -c pass): {bare_start * 1000:.0f} ms; "
          f"`ticket-gateway --help`: {help_start * 1000:.0f} ms; "
          f"start-up imports of `ingest` (app, pipeline, handlers): {import_start * 1000:.0f} ms")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

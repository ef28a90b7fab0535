#!/usr/bin/env python3
"""Threading CPU benchmark (not a test): the main process's CPU per stored mail threaded by the intake engine.

    .venv/bin/python bench/bench_thread_cpu.py                 # 1,000 mails, SQLite
    .venv/bin/python bench/bench_thread_cpu.py -n 300 --profile
    .venv/bin/python bench/bench_thread_cpu.py --db postgresql://postgres@127.0.0.1:5432/tg_bench_lean

The corpus comes from ../shared/bench/gen_corpus.py (generated under bench/out/corpus-N-SEED when missing, as
bench_imap.py `corpus()` does; same seed and N give the same bytes). In one process, as serve threads stored mail:

1. the N mails are stored with Intake.store_many (batches of 50, not measured);
2. they are threaded with Engine.thread in batches of 16, the preparation worker started first (a fresh
   interpreter, as serve starts it: the parse, HTML, classification and attachment blobs are its CPU, not ours);
   measured: the main process's CPU (time.process_time, this process only, not the worker) and the wall time,
   per mail; and the SQL statements sent per mail (a SQLAlchemy `before_cursor_execute` counter; the
   driver-level savepoints of gateway.store.sql.direct_savepoints do not pass through it);
3. baseline, same run, same bytes: the stdlib parse (bench_parse.stdlib_parse), CPU per mail, best of 3.

Checked: every mail has an outcome (none left `received`). The load average (/proc/loadavg) is printed at the
start and the end: the machine is shared. --profile: cProfile over step 2 (the CPU figure of a profiled run is
not comparable), the top 40 functions by own CPU time; --statements: the 40 most frequent SQL statements.

Database: a fresh SQLite under a temporary directory in bench/out (default) or --db URL, e.g. a scratch
PostgreSQL database (every table is dropped first).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from bench_imap import OUT, close_app, corpus, loadavg, make_app, reset_pg  # noqa: E402
from bench_parse import stdlib_parse  # noqa: E402

BATCH = 16
STORE_BATCH = 50


def parse_cpu(raws: list[bytes], rounds: int = 3) -> float:
    """The stdlib parse of every mail: CPU seconds, best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        gc.collect()
        t0 = time.process_time()
        for raw in raws:
            stdlib_parse(raw)
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--db", default=None, help="database URL (default: a fresh SQLite)")
    ap.add_argument("--profile", action="store_true", help="cProfile the threading, top 40 by own time")
    ap.add_argument("--statements", action="store_true", help="the 40 most frequent SQL statements, counted")
    ap.add_argument("--profile-out", default=None, help="with --profile: also write the pstats to this file")
    args = ap.parse_args()

    from sqlalchemy import event, func, select

    from gateway.engine import Engine
    from gateway.envelope import Envelope
    from gateway.models import InboundMail

    raws = [p.read_bytes() for p in corpus(args.n, args.seed)]
    load0 = loadavg()
    print(f"load average at start: {load0}", file=sys.stderr)
    if args.db:
        reset_pg(args.db)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=OUT, prefix="thread-cpu-") as tmp:
        work = Path(tmp)
        app = make_app(args.db, work, worker=True)
        try:
            intake = app.intake()
            ids: list[int] = []
            for i in range(0, len(raws), STORE_BATCH):
                ids += intake.store_many([(raw, Envelope(rcpt_tos=("support@helpdesk.example.com",), source="imap",
                                                         source_ref=str(i + j)))
                                          for j, raw in enumerate(raws[i:i + STORE_BATCH])])
            engine = Engine(app, intake)
            statements = 0
            texts: Counter[str] = Counter()

            def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
                nonlocal statements
                statements += 1
                if args.statements:
                    texts[" ".join(statement.split())[:160]] += 1

            event.listen(app.engine, "before_cursor_execute", count)
            prof = cProfile.Profile(time.process_time) if args.profile else None  # CPU, not waits
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            if prof is not None:
                prof.enable()
            for i in range(0, len(ids), BATCH):
                engine.thread(ids[i:i + BATCH])
            if prof is not None:
                prof.disable()
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            event.remove(app.engine, "before_cursor_execute", count)
            with app.sessions() as s:
                outcomes = dict(s.execute(select(InboundMail.outcome, func.count())
                                          .group_by(InboundMail.outcome)).all())
        finally:
            close_app(app)
    parse = parse_cpu(raws)
    load1 = loadavg()
    n = len(raws)
    left = outcomes.get("received", 0)
    print(f"bench_thread_cpu: {n} mails, {args.db or 'SQLite'}, batches of {BATCH}, the preparation worker")
    print(f"  outcomes: {', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}")
    print(f"  threading, main-process CPU: {cpu / n * 1000:7.3f} ms/mail{'  (profiled)' if prof else ''}")
    print(f"  threading, wall:             {wall / n * 1000:7.3f} ms/mail")
    print(f"  SQL statements:              {statements / n:7.2f} per mail ({statements})")
    print(f"  baseline: stdlib parse CPU:  {parse / n * 1000:7.3f} ms/mail (best of 3)")
    print(f"  ratio threading CPU / parse CPU: {cpu / parse:.2f}")
    print(f"  load average: {load0} (start), {load1} (end)")
    if prof is not None:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(40)
        print(out.getvalue())
        if args.profile_out:
            prof.dump_stats(args.profile_out)
    if args.statements:
        for text, k in texts.most_common(40):
            print(f"  {k:6d}  {text}")
    if left:
        print(f"FAILED: {left} mails left received", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""IMAP benchmark (not a test): N corpus mails appended to a real Dovecot, drained by the IMAP poller.

    .venv/bin/python bench/bench_imap.py            # 5,000 mails (target: >= 150 msg/s)
    .venv/bin/python bench/bench_imap.py -n 500     # a quick run

The corpus comes from ../shared/bench/gen_corpus.py (generated under bench/out/corpus-N when missing; same
seed and N give the same bytes). Reported in the same run, on the same mails:

- baseline `raw fetch`: imapclient alone: SELECT, SEARCH, UID FETCH BODY.PEEK[] in batches (no store);
- `store only` / `pipeline only`: Intake.store, then Intake.process, of the same bytes read from the .eml
  files (no IMAP): the ceiling any transport reaches through the intake; `store_many`: the same bytes in
  batches of --batch-size through Intake.store_many (one commit per batch, as the poller stores);
- `poller, two phases` (the figure this benchmark printed first, kept for comparison): the poller's drain and
  its threading timed apart:
  1. drain: UID FETCH BODY.PEEK[] per batch, Intake.store_many (one commit), UID MOVE of the batch to
     Processed. A mail counts as drained only once its commit returned and it left the INBOX: the phase ends
     when the last batch was moved, then the benchmark checks that every mail is a committed row in
     inbound_mail and the INBOX is empty. Threading into tickets is NOT included in this rate;
  2. threading: ImapPoller.thread_stored(): the stored mails through the intake engine (Engine.thread, batches
     of 16, each mail's CPU work in the preparation worker within limits.mail_cpu_seconds, as serve threads
     SMTP mail; the worker is started first, as serve starts it), outcomes recorded, quarantined mail refiled.
     Reported as the time from the start until every mail is threaded (ticket/comment/ignored/...), checked:
     no mail left `received`; and the threading phase alone.
- `poller as serve runs it` (the issue's figure since the IMAP threading overlaps the drain): what `serve`
  does with an `[[imap]]` account: its poller's own drain, ImapPoller.drain() (thread=True), threading with
  serve's threading callable (gateway.imap.pollers.serve_threading: serve's engine, holding serve's write
  gate), here on a fresh database and a second Dovecot account holding the same mails; from the first fetch
  until every mail is threaded, checked as above. (A poller that hands its batches to the worker ahead,
  gateway.engine.ThreadAhead, threads between the drain's batches; one that cannot, after each pass.)
  Where the time goes is printed per mail (ms): the wall time; the CPU of this process, of the preparation
  worker (with those restarted after a large mail) and of Dovecot (its processes); how long this process's
  thread waited for a CPU (runnable, not running: what other load on the machine costs, from schedstat) and for
  the worker's results (ParseAhead.waited; before ParseAhead.begin it counted the hand-over too).

- baseline `parse`: the bare stdlib parse of the same bytes in memory (bench_parse.stdlib_parse, best of 3):
  the issue's yardstick, "IMAP until every mail is a ticket >= 0.8 of the parse rate"; the poller's figures
  (drain, threading alone, until every mail is threaded, both ways) are reported as a ratio of it;
- `steady` (--steady-rate R for --steady-seconds T; 0 skips it): two pollers with separate apps (two
  instances on one database, one holds the lease, gateway.lease) run the service loop (IDLE) while mails are
  appended at R msg/s, each app with its preparation worker (as each serve has); the latency of each mail from
  its APPEND to its threaded outcome (processed_at), p50/p95/max, checked: every mail threaded, the standby
  never polled.

The load average (/proc/loadavg) is printed at the start and the end: the machine is shared.

Database: a fresh SQLite under bench/out (default) or --db URL (e.g. a scratch PostgreSQL database).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import App

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_parse import stdlib_parse, timed  # noqa: E402
from dovecot import DovecotAccount, start_dovecot  # noqa: E402
from procstat import proc_cpu, tree_cpu  # noqa: E402

GEN = Path(os.environ.get("TG_GEN_CORPUS") or ROOT.parent / "shared" / "bench" / "gen_corpus.py")
OUT = ROOT / "bench" / "out"


def corpus(n: int, seed: int) -> list[Path]:
    d = OUT / f"corpus-{n}-{seed}"
    eml = d / "eml"
    if not (eml.is_dir() and len(list(eml.glob("*.eml"))) == n):
        shutil.rmtree(d, ignore_errors=True)
        print(f"generating {n} mails with {GEN} ...", file=sys.stderr)
        subprocess.run([sys.executable, str(GEN), str(d), "-n", str(n), "--seed", str(seed)], check=True)
    return sorted(eml.glob("*.eml"))


def make_app(db_url: str | None, work: Path, *, worker: bool = False) -> App:
    from gateway.app import build_app
    from gateway.config import validate

    url = db_url or f"sqlite:///{work / 'gateway.db'}"
    cfg = validate({"gateway": {"data_dir": str(work), "addresses": ["support@helpdesk.example.com"],
                                "unknown_senders": "register"},
                    "database": {"url": url}}, base_dir=work)
    app = build_app(cfg)
    app.upgrade_db()
    if worker:  # the preparation worker, a fresh interpreter, as serve starts it
        from gateway.engine import start_worker

        app.ahead = start_worker(cfg, context="exec")
    return app


def close_app(app: App) -> None:
    if app.ahead is not None:
        app.ahead.close()
        app.ahead = None
    app.close()


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def reset_pg(url: str) -> None:
    """A scratch PostgreSQL database: drop every table so that each phase starts empty."""
    from sqlalchemy import create_engine, text

    e = create_engine(url)
    with e.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    e.dispose()


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


Snapshot = dict[str, float]


def cpu_snapshot(app: App, dovecot_pid: int) -> Snapshot:
    """Seconds so far: wall; CPU of this process (main), of the preparation workers (the live one from /proc
    plus those reaped, restarted after a large mail: RUSAGE_CHILDREN; Dovecot, also a child, is reaped only at
    its stop) and of Dovecot (its processes); this thread's wait for a CPU (runnable, not running: the shared
    machine; /proc/thread-self/schedstat); this process's wait for the worker's results (ParseAhead.waited)."""
    import resource

    worker = app.ahead.worker.proc if app.ahead is not None else None
    live = proc_cpu(worker.pid) if worker is not None else 0.0
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        runq = int(Path("/proc/thread-self/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        runq = 0.0
    return {"wall": time.perf_counter(), "main_cpu": time.process_time(),
            "worker_cpu": live + reaped.ru_utime + reaped.ru_stime, "dovecot_cpu": tree_cpu(dovecot_pid),
            "main_runq": runq, "waited": app.ahead.waited if app.ahead is not None else 0.0}


def per_mail(n: int, start: Snapshot, end: Snapshot) -> dict[str, float]:
    """ms per mail between two snapshots (see cpu_snapshot)."""
    return {k: round(1000 * (end[k] - start[k]) / n, 2) for k in start}


def check_drained(app: App, acct: DovecotAccount, result: Any, complete: bool, n: int) -> None:
    """Every mail committed, moved out of the INBOX and threaded (no row left `received`)."""
    from sqlalchemy import func, select

    from gateway.models import InboundMail

    assert complete and result.deferred == 0 and result.failed == 0, result.as_dict()
    assert result.moved + result.quarantined == n and result.stored == n, result.as_dict()
    left = acct.count("INBOX")
    assert left == 0, left
    with app.sessions() as s:
        rows = s.scalar(select(func.count()).select_from(InboundMail))
        received = s.scalar(select(func.count()).select_from(InboundMail).where(InboundMail.outcome == "received"))
    assert rows == n and received == 0, (rows, received)
    assert result.threaded == n, result.as_dict()


def as_serve(server: Any, raws: list[bytes], db_url: str | None, work: Path, batch_size: int) -> dict[str, Any]:
    """The poller as `serve` runs it (see the module docstring): a drain that threads, with serve's threading
    callable over an engine and a write gate of serve's kind; a second account holding the same mails."""
    import types

    from gateway.engine import Engine
    from gateway.imap import ImapPoller
    from gateway.imap.pollers import serve_threading
    from gateway.service import WriteGate

    acct = server.add_user()
    c = acct.client(timeout=60)
    for raw in raws:
        c.append("INBOX", raw)
    c.logout()
    if db_url:
        reset_pg(db_url)
    work.mkdir()
    app = make_app(db_url, work, worker=True)
    svc = types.SimpleNamespace(engine=Engine(app, app.intake()),
                                gate=WriteGate(app.engine.dialect.name == "sqlite"))
    poller = ImapPoller(app, acct.account_config("serve", batch_size=batch_size, timeout_seconds=120),
                        thread=serve_threading(svc))
    poller.connect()
    c0 = cpu_snapshot(app, server.proc.pid)
    result = poller.drain()
    c1 = cpu_snapshot(app, server.proc.pid)
    poller.disconnect()
    check_drained(app, acct, result, True, len(raws))
    close_app(app)
    seconds = c1["wall"] - c0["wall"]
    return {"serve_seconds": round(seconds, 2), "serve_msg_s": round(rate(len(raws), seconds), 1),
            "serve_ms": per_mail(len(raws), c0, c1), "serve_outcomes": dict(Counter(result.outcomes))}


def steady(acct: DovecotAccount, raws: list[bytes], db_url: str | None, work: Path, per_s: float,
           seconds: float) -> dict[str, Any]:
    """Two instances' pollers (service loop, IDLE, the lease) while mails arrive at `per_s`: APPEND -> threaded
    latency percentiles."""
    import email
    import threading
    from datetime import UTC, datetime

    from sqlalchemy import select

    from gateway.imap import ImapPoller
    from gateway.models import InboundMail

    if db_url:
        reset_pg(db_url)
    work.mkdir()
    apps = [make_app(db_url, work, worker=True), make_app(db_url, work, worker=True)]
    cfg = acct.account_config("steady", idle_seconds=300, timeout_seconds=120)
    pollers = [ImapPoller(a, cfg) for a in apps]
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, args=(stop,), daemon=True) for p in pollers]
    for t in threads:
        t.start()
    count = min(len(raws), max(1, int(per_s * seconds)))
    appended: dict[str, datetime] = {}
    c = acct.client(timeout=60)
    try:
        t0 = time.perf_counter()
        for i, raw in enumerate(raws[:count]):
            delay = t0 + i / per_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            mid = str(email.message_from_bytes(raw.split(b"\n\n", 1)[0] + b"\n\n").get("Message-ID", "")).strip()
            appended[mid.strip("<>")] = datetime.now(UTC)
            c.append("INBOX", raw)
    finally:
        c.logout()
    deadline = time.monotonic() + 120
    lat: list[float] = []
    while time.monotonic() < deadline:
        with apps[0].sessions() as s:
            rows = s.execute(select(InboundMail.message_id, InboundMail.processed_at, InboundMail.outcome)).all()
        if len(rows) >= count and all(r.outcome != "received" for r in rows):
            lat = sorted((r.processed_at - appended[(r.message_id or "").strip("<>")]).total_seconds() for r in rows)
            break
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join(30)
    states = sorted(p.idle_count > 0 for p in pollers)
    for a in apps:
        close_app(a)
    assert len(lat) == count, f"not every mail was threaded within 120 s of the last APPEND ({len(lat)}/{count})"
    assert states == [False, True], "both instances polled: the lease did not hold"

    def pct(q: float) -> float:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))], 3)

    return {"steady_rate": per_s, "steady_n": count, "steady_p50_s": pct(0.5), "steady_p95_s": pct(0.95),
            "steady_max_s": round(lat[-1], 3)}


def fmt_ms(ms: dict[str, float]) -> str:
    return (f"wall {ms['wall']}, CPU: main {ms['main_cpu']}, worker {ms['worker_cpu']}, "
            f"Dovecot {ms['dovecot_cpu']}; main waited for a CPU {ms['main_runq']}, for the worker's results "
            f"{ms['waited']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=5000, help="mails (default 5000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--db", metavar="URL", help="database URL (default: a fresh SQLite under bench/out)")
    ap.add_argument("--no-pipeline-baseline", action="store_true", help="skip the pipeline-only run")
    ap.add_argument("--steady-rate", type=float, default=20.0, help="msg/s for the steady phase (0: skip it)")
    ap.add_argument("--steady-seconds", type=float, default=15.0)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    files = corpus(args.n, args.seed)
    raws = [f.read_bytes() for f in files]
    total_bytes = sum(len(r) for r in raws)
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="imap-", dir=OUT))
    server = start_dovecot(work / "dovecot", users=3)
    figures: dict[str, Any] = {"n": len(raws), "mbytes": round(total_bytes / 1e6, 1),
                               "batch_size": args.batch_size, "load_start": loadavg()}
    try:
        from imapclient import IMAPClient

        acct = server.add_user()

        def client() -> IMAPClient:
            c = IMAPClient(acct.host, port=acct.port, ssl=False, timeout=60)
            c.login(acct.user, acct.password)
            return c

        # Append ------------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        c = client()
        for raw in raws:
            c.append("INBOX", raw)
        c.logout()
        figures["append_msg_s"] = round(rate(len(raws), time.perf_counter() - t0), 1)

        # Baseline: the bare stdlib parse of the same bytes -------------------------------------------------
        parse_s = min(timed(stdlib_parse, raws) for _ in range(3))
        figures["parse_msg_s"] = round(rate(len(raws), parse_s), 1)

        # Baseline: raw fetch ------------------------------------------------------------------------------
        t0 = time.perf_counter()
        c = client()
        c.select_folder("INBOX", readonly=True)
        uids = sorted(c.search(["ALL"]))
        got = 0
        for i in range(0, len(uids), args.batch_size):
            data = c.fetch(uids[i:i + args.batch_size], ["BODY.PEEK[]"])
            got += sum(1 for d in data.values() if b"BODY[]" in d)
        c.logout()
        raw_s = time.perf_counter() - t0
        assert got == len(raws), (got, len(raws))
        figures["raw_fetch_msg_s"] = round(rate(got, raw_s), 1)

        # Baseline: the pipeline without IMAP ---------------------------------------------------------------
        if not args.no_pipeline_baseline:
            from gateway.intake import Envelope

            if args.db:
                reset_pg(args.db)
            pwork = work / "pipeline"
            pwork.mkdir()
            app = make_app(args.db, pwork)
            intake = app.intake()
            t0 = time.perf_counter()
            ids = [intake.store(raw, Envelope(source="file", source_ref=str(i))) for i, raw in enumerate(raws)]
            store_s = time.perf_counter() - t0
            for mail_id in ids:
                intake.process(mail_id)
            pipe_s = time.perf_counter() - t0
            app.close()
            figures["store_only_msg_s"] = round(rate(len(raws), store_s), 1)
            figures["pipeline_only_msg_s"] = round(rate(len(raws), pipe_s), 1)

            if args.db:
                reset_pg(args.db)
            mwork = work / "store_many"
            mwork.mkdir()
            app = make_app(args.db, mwork)
            intake = app.intake()
            t0 = time.perf_counter()
            for i in range(0, len(raws), args.batch_size):
                intake.store_many([(raw, Envelope(source="file", source_ref=str(i + j)))
                                   for j, raw in enumerate(raws[i:i + args.batch_size])])
            many_s = time.perf_counter() - t0
            app.close()
            figures["store_many_msg_s"] = round(rate(len(raws), many_s), 1)

        # The poller ------------------------------------------------------------------------------------------
        from gateway.imap import ImapPoller

        if args.db:
            reset_pg(args.db)
        iwork = work / "poller"
        iwork.mkdir()
        app = make_app(args.db, iwork, worker=True)
        poller = ImapPoller(app, acct.account_config("bench", batch_size=args.batch_size, timeout_seconds=120))
        poller.connect()
        assert poller.decoupled, "the server has no UIDPLUS: the poller threads before it moves"
        c0 = cpu_snapshot(app, server.proc.pid)
        t0 = time.perf_counter()
        result = poller.drain(thread=False)  # fetch + store_many (committed) + UID MOVE, per batch
        drain_s = time.perf_counter() - t0
        c1 = cpu_snapshot(app, server.proc.pid)
        complete = poller.thread_stored(result)  # then threading, from the stored mail
        tickets_s = time.perf_counter() - t0
        c2 = cpu_snapshot(app, server.proc.pid)
        poller.disconnect()
        check_drained(app, acct, result, complete, len(raws))
        close_app(app)
        figures["poller_msg_s"] = round(rate(result.stored, drain_s), 1)
        figures["poller_seconds"] = round(drain_s, 2)
        figures["tickets_seconds"] = round(tickets_s, 2)
        figures["tickets_msg_s"] = round(rate(len(raws), tickets_s), 1)
        figures["thread_only_msg_s"] = round(rate(len(raws), tickets_s - drain_s), 1)
        figures["thread_parse_ratio"] = round(figures["thread_only_msg_s"] / figures["parse_msg_s"], 3)
        figures["outcomes"] = dict(Counter(result.outcomes))
        figures["drain_parse_ratio"] = round(figures["poller_msg_s"] / figures["parse_msg_s"], 3)
        figures["tickets_parse_ratio"] = round(figures["tickets_msg_s"] / figures["parse_msg_s"], 3)
        figures["drain_ms"] = per_mail(len(raws), c0, c1)
        figures["thread_ms"] = per_mail(len(raws), c1, c2)

        # The poller as serve runs it: one drain, threading with serve's engine and write gate -------------------
        figures.update(as_serve(server, raws, args.db, work / "serve-road", args.batch_size))
        figures["serve_parse_ratio"] = round(figures["serve_msg_s"] / figures["parse_msg_s"], 3)

        # Steady arrival, two instances ----------------------------------------------------------------------
        if args.steady_rate > 0:
            figures.update(steady(server.add_user(), raws, args.db, work / "steady", args.steady_rate,
                                  args.steady_seconds))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    figures["load_end"] = loadavg()

    print(f"IMAP benchmark: {figures['n']} mails, {figures['mbytes']} MB, batch {args.batch_size}, "
          f"database {args.db or 'sqlite (fresh)'}")
    print(f"  append to Dovecot (setup)      {figures['append_msg_s']:>8} msg/s")
    print(f"  baseline: raw imapclient fetch {figures['raw_fetch_msg_s']:>8} msg/s")
    print(f"  baseline: stdlib parse         {figures['parse_msg_s']:>8} msg/s  (same bytes, in memory)")
    if "pipeline_only_msg_s" in figures:
        print(f"  baseline: Intake.store only    {figures['store_only_msg_s']:>8} msg/s  (one commit per mail)")
        print(f"  baseline: store+process, no IMAP {figures['pipeline_only_msg_s']:>6} msg/s")
        print(f"  baseline: Intake.store_many     {figures['store_many_msg_s']:>8} msg/s  (one commit per "
              f"{args.batch_size})")
    ratio = figures["poller_msg_s"] / figures["raw_fetch_msg_s"]
    verdict = "OK" if figures["poller_msg_s"] >= 150 else "BELOW TARGET"
    print(f"  poller drain: fetch+store(committed)+MOVE {figures['poller_msg_s']:>7} msg/s  "
          f"({figures['poller_seconds']} s; {ratio:.1%} of raw fetch; threading NOT included; "
          f"target >= 150 msg/s: {verdict})")
    print(f"  poller, two phases (the old figure): until every mail is threaded (drain, then tickets): "
          f"{figures['tickets_seconds']} s = {figures['tickets_msg_s']} msg/s end to end; threading alone "
          f"{figures['thread_only_msg_s']} msg/s (ratio to the parse {figures['thread_parse_ratio']:.2f})")
    print(f"    ms per mail: drain {fmt_ms(figures['drain_ms'])}; threading {fmt_ms(figures['thread_ms'])}")
    print(f"  poller as serve runs it (drain that threads, serve's engine and write gate): until every mail is "
          f"threaded {figures['serve_seconds']} s = {figures['serve_msg_s']} msg/s")
    print(f"    ms per mail: {fmt_ms(figures['serve_ms'])}")
    t_ratio = figures["serve_parse_ratio"]
    print(f"  ratios to the stdlib parse: drain {figures['drain_parse_ratio']:.2f}, until threaded: two phases "
          f"{figures['tickets_parse_ratio']:.2f}, as serve runs it {t_ratio:.2f} "
          f"(target >= 0.8: {'OK' if t_ratio >= 0.8 else 'BELOW TARGET'})")
    if "steady_n" in figures:
        print(f"  steady {figures['steady_rate']:g} msg/s, two instances (one holds the lease), "
              f"{figures['steady_n']} mails: APPEND -> threaded p50 {figures['steady_p50_s']} s, "
              f"p95 {figures['steady_p95_s']} s, max {figures['steady_max_s']} s")
    print(f"  outcomes: {figures['outcomes']}")
    print(f"  load average: {figures['load_start']} at the start, {figures['load_end']} at the end")
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())

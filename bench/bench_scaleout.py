#!/usr/bin/env python3
"""Scale-out benchmark (not a test): 1, 2 and 3 `ticket-gateway serve` instances on one PostgreSQL database,
the same SMTP load in the same run.

    .venv/bin/python bench/bench_scaleout.py [-n 1000] [--instances 1,2,3] [--clients 6] [--rounds 1]
                                             [--db-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

Each pass starts the instances on a fresh database (tests/scaleout.py: each its own data directory, SMTP port and
HTTP on 127.0.0.1:0; the database, the attachment store and the reply secret shared), with the outbox delivering
to one SMTP sink (aiosmtpd on loopback) and the SLA sweep running in every instance (a policy every ticket falls
under). `--clients` SMTP clients (separate processes, one connection each) send the corpus
(../shared/bench/gen_corpus.py, written under bench/out/corpus-N, the one bench_smtp.py uses) as fast as the
instances answer, client k to instance k mod I: the same load for every pass.

Reported per pass: the rate until the last 250; the rate until every mail was threaded (the throughput, from the
first mail sent to the last processed_at) and its ratio to the one-instance pass of the same run; 250 -> ticket
latency (received_at -> processed_at) p50/p95; CPU seconds of the instances per mail; when the outbox had sent
every notification; the load average. Counted in every pass (0 lost, 0 duplicated): one inbound row per accepted
mail (by Message-ID), none left `received`; one ticket per `ticket` outcome and one comment per `comment`
outcome; every outbox row sent and at the sink exactly once (by Message-ID). While the mail is threaded the
benchmark samples pg_stat_activity every 0.1 s and reports the statements that waited for a lock (the hot spots
of several instances) with the number of transactions waiting on it, averaged over the samples (before the
ticket numbers came from a sequence: `UPDATE counters ...: 0.50` with two instances, 1.20 with three).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))

from bench_smtp import ADDRESS, GEN, OUT, send_all  # noqa: E402
from scaleout import Cluster, drop_pg_database, pg_database  # noqa: E402

ADMIN_URL = os.environ.get("TG_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def corpus(n: int) -> list[str]:
    import subprocess

    d = OUT / f"corpus-{n}"
    if not (d / "manifest.tsv").exists():
        print(f"generating {n} mails into {d} ...", flush=True)
        subprocess.run([sys.executable, str(GEN), str(d), "-n", str(n)], check=True, stdout=subprocess.DEVNULL)
    return sorted(str(p) for p in (d / "eml").glob("*.eml"))


def send_spread(ports: list[int], files: list[str], clients: int) -> dict[str, Any]:
    """bench_smtp's clients (processes, one connection each), client k sending to ports[k % len(ports)]."""
    r = send_all(ports, files, clients)
    return {"t0": r["t0"], "t1": r["t1"], "ok": r["ok"], "retries": r["retries"], "rate_250": r["rate"]}


class LockSampler(threading.Thread):
    """Samples pg_stat_activity of one database: which statements wait for a lock, how often."""

    def __init__(self, dbname: str, step: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.dbname, self.step = dbname, step
        self.samples = 0
        self.active = 0
        self.waits: Counter[str] = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(ADMIN_URL)
        with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                             dbname=u.database or "postgres", autocommit=True) as c:
            while not self.stop.is_set():
                rows = c.execute("SELECT wait_event_type, wait_event, query FROM pg_stat_activity "
                                 "WHERE datname = %s AND state = 'active' AND pid <> pg_backend_pid()",
                                 (self.dbname,)).fetchall()
                self.samples += 1
                self.active += len(rows)
                for wtype, wevent, query in rows:
                    if wtype == "Lock":
                        self.waits[f"{wevent}: {' '.join(query.split())[:90]}"] += 1
                time.sleep(self.step)

    def report(self) -> list[tuple[str, float]]:
        return [(q, n / max(1, self.samples)) for q, n in self.waits.most_common(5)]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children (the preparation worker), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick


def worker_pids(pid: int) -> list[int]:
    """Every process below `pid` (the preparation worker and whatever it started)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def counts(app: Any, sink: Any, ok: int) -> dict[str, Any]:
    """What the database and the sink hold, and whether anything was lost or doubled."""
    from sqlalchemy import func, select

    from gateway.models import Comment, InboundMail, OutboxMail, Ticket

    with app.sessions() as s:
        outcomes = Counter(dict(s.execute(select(InboundMail.outcome, func.count())
                                          .group_by(InboundMail.outcome)).all()))
        inbound = sum(outcomes.values())
        distinct = s.scalar(select(func.count(func.distinct(InboundMail.message_id)))) or 0
        tickets = s.scalar(select(func.count()).select_from(Ticket)) or 0
        comments = s.scalar(select(func.count()).select_from(Comment).where(Comment.source == "mail")) or 0
        numbers = s.scalar(select(func.count(func.distinct(Ticket.number)))) or 0
        outbox = Counter(dict(s.execute(select(OutboxMail.status, func.count()).group_by(OutboxMail.status)).all()))
        sent_ids = set(s.scalars(select(OutboxMail.message_id).where(OutboxMail.status == "sent")))
    import email

    at_sink = Counter(str(email.message_from_bytes(r.data)["Message-ID"]).strip("<>") for r in list(sink.received))
    problems = []
    if inbound != ok or distinct != ok:
        problems.append(f"{ok} mails accepted, {inbound} inbound rows, {distinct} distinct Message-IDs")
    if outcomes.get("received"):
        problems.append(f"{outcomes['received']} left received")
    if tickets != outcomes.get("ticket", 0) or numbers != tickets:
        problems.append(f"{tickets} tickets ({numbers} numbers) for {outcomes.get('ticket', 0)} ticket outcomes")
    if comments != outcomes.get("comment", 0):
        problems.append(f"{comments} mail comments for {outcomes.get('comment', 0)} comment outcomes")
    doubled = sum(1 for n in at_sink.values() if n > 1)
    if doubled or set(at_sink) != sent_ids:
        problems.append(f"sink: {doubled} mails twice, {len(set(at_sink) - sent_ids)} not sent by the outbox, "
                        f"{len(sent_ids - set(at_sink))} sent but missing")
    return {"outcomes": dict(outcomes), "tickets": tickets, "comments": comments, "outbox": dict(outbox),
            "at_sink": sum(at_sink.values()), "problems": problems}


def one_pass(instances: int, files: list[str], clients: int, work: Path, tag: str, sweep: int) -> dict[str, Any]:
    from sqlalchemy import func, select

    from gateway.app import build_app
    from gateway.config import validate
    from gateway.models import InboundMail, OutboxMail
    from gateway.outbound.sink import Sink

    name = f"tg_bench_scaleout_{tag}_{os.getpid()}"
    url = pg_database(ADMIN_URL, name)
    root = work / tag
    app = build_app(validate({"gateway": {"data_dir": str(root / "operator"), "addresses": [ADDRESS]},
                              "database": {"url": url}}, base_dir=root))
    app.upgrade_db()
    sink = Sink().start()
    extra = {"sla": {"sweep_seconds": 2, "policies": [{"name": "all", "response": 600, "resolution": 6000}]},
             "serve": {"pending_sweep_seconds": sweep}, "logging": {"level": "WARNING"}}
    load0 = os.getloadavg()
    sampler = LockSampler(name)
    cluster = Cluster(root, instances, url, relay_port=sink.port, addresses=[ADDRESS], extra=extra)
    try:
        pids = [x.proc.pid for x in cluster.instances]
        workers = {p: worker_pids(p) for p in pids}
        cpu0 = sum(cpu_seconds(p) + sum(cpu_seconds(w) for w in workers[p]) for p in pids)
        sampler.start()
        sent = send_spread(cluster.ports, files, clients)

        def left(q: Any) -> int:
            with app.sessions() as s:
                return int(s.scalar(q) or 0)

        deadline = time.time() + 3600
        while left(select(func.count()).select_from(InboundMail).where(InboundMail.outcome == "received")):
            if time.time() > deadline:
                raise SystemExit(f"threading did not finish\n{cluster.logs()}")
            time.sleep(0.2)
        while left(select(func.count()).select_from(OutboxMail).where(OutboxMail.status == "queued")):
            if time.time() > deadline:
                raise SystemExit(f"the outbox did not drain\n{cluster.logs()}")
            time.sleep(0.2)
        drained = time.time()
        sampler.stop.set()
        workers = {p: sorted(set(workers[p]) | set(worker_pids(p))) for p in pids}
        cpu = sum(cpu_seconds(p) + sum(cpu_seconds(w) for w in workers[p]) for p in pids) - cpu0
        load1 = os.getloadavg()
        time.sleep(2)  # a few more outbox and sweep rounds in every instance: nothing more may arrive
        with app.sessions() as s:
            rows = s.execute(select(InboundMail.received_at, InboundMail.processed_at)).all()
        lat = sorted((p - r).total_seconds() for r, p in rows if p is not None)
        last = max(p for _, p in rows if p is not None).timestamp()
        result = {"instances": instances, **sent, "threaded_rate": len(lat) / (last - sent["t0"]),
                  "p50": statistics.median(lat), "p95": lat[min(len(lat) - 1, int(0.95 * len(lat)))],
                  "cpu_ms_per_mail": 1000 * cpu / max(1, len(lat)), "outbox_drained_s": drained - sent["t0"],
                  "load_before": load0, "load_after": load1, "lock_waits": sampler.report(),
                  "active_backends": sampler.active / max(1, sampler.samples), **counts(app, sink, sent["ok"])}
    finally:
        sampler.stop.set()
        cluster.stop()
        sink.stop()
        app.close()
        drop_pg_database(ADMIN_URL, name)
    return result


def show(r: dict[str, Any], base: dict[str, Any] | None) -> None:
    ratio = f" = {r['threaded_rate'] / base['threaded_rate']:.2f} x one instance" if base else ""
    print(f"[{r['instances']} instance(s)] 250s: {r['ok']} at {r['rate_250']:.1f} mail/s ({r['retries']} retried); "
          f"threaded {r['threaded_rate']:.1f} mail/s{ratio}; 250 -> ticket p50 {r['p50']:.2f}s p95 {r['p95']:.2f}s; "
          f"CPU {r['cpu_ms_per_mail']:.0f} ms/mail; outbox drained after {r['outbox_drained_s']:.1f}s; "
          f"load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}", flush=True)
    verdict = "lost/doubled: " + "; ".join(r["problems"]) if r["problems"] else "0 lost, 0 doubled"
    print(f"    outcomes {r['outcomes']}; {r['tickets']} tickets, {r['comments']} comments; outbox {r['outbox']}, "
          f"{r['at_sink']} at the sink; {verdict}", flush=True)
    waits = "; ".join(f"{q}: {f:.2f}" for q, f in r["lock_waits"]) or "none"
    print(f"    busy backends {r['active_backends']:.1f} on average; waiting for a lock (transactions, on average "
          f"over the samples): {waits}",
          flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="corpus size (default 1000)")
    ap.add_argument("--instances", default="1,2,3", help="instance counts, one pass each (default 1,2,3)")
    ap.add_argument("--clients", type=int, default=6, help="SMTP clients in all, spread over the instances")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the passes (alternating order) this often")
    ap.add_argument("--pending-sweep", type=int, default=60, metavar="SECONDS",
                    help="serve.pending_sweep_seconds of the instances (default 60, the default): stored mail not "
                         "threaded after this long is threaded by whichever instance's sweep finds it")
    args = ap.parse_args()
    files = corpus(args.n)
    counts_ = [int(x) for x in args.instances.split(",") if x.strip()]
    print(f"corpus: {len(files)} mails, {sum(os.path.getsize(f) for f in files) / 2**20:.0f} MiB; {args.clients} "
          f"clients; pending_sweep_seconds {args.pending_sweep}; PostgreSQL {ADMIN_URL.rsplit('@', 1)[-1]}; "
          f"cpus {os.cpu_count()}; load {', '.join(f'{x:.1f}' for x in os.getloadavg())}",
          flush=True)
    work = OUT / "scaleout"
    results: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        order = counts_ if rnd % 2 == 0 else counts_[::-1]
        for k in order:
            r = one_pass(k, files, args.clients, work, f"r{rnd}_i{k}", args.pending_sweep)
            results.append(r)
            base = next((x for x in results if x["instances"] == 1), None)
            show(r, base if k != 1 else None)
    by: dict[int, list[float]] = {}
    for r in results:
        by.setdefault(r["instances"], []).append(r["threaded_rate"])
    if 1 in by:
        one = statistics.median(by[1])
        print("summary (median threaded rate): " + "; ".join(
            f"{k}: {statistics.median(v):.1f} mail/s = {statistics.median(v) / one:.2f} x one"
            for k, v in sorted(by.items())))
    (work / "report.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"report: {work / 'report.json'}")
    return 1 if any(r["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

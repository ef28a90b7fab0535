"""Benchmark (not a test): a public comment on a ticket with 200 watchers.

Measures, in one run against the same aiosmtpd sink on a loopback port:
* enqueue: the comment's transaction (writing one small outbox row per recipient: nothing is rendered there);
* delivery: `deliver_due` until the sink has accepted every mail (rendering and building each mail on its
  first claim, storing the bytes, sending them);
* total: comment committed -> last mail accepted;
* baseline: a plain smtplib client sending the same bytes to the same sink over one connection
  (the sink's own receive rate), so the outbox throughput is reported as a ratio.

    .venv/bin/python bench/bench_outbox.py [--watchers 200] [--runs 5] [--db-url URL]
"""

from __future__ import annotations

import argparse
import smtplib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.outbound.sink import Sink

ROOT = Path(__file__).resolve().parents[1]


def build(db_url: str | None, tmp: Path, port: int) -> App:
    from gateway.app import build_app
    from gateway.config import validate
    from gateway.migrate import upgrade

    url = db_url or f"sqlite:///{tmp / 'var' / 'gateway.db'}"
    cfg = validate({"gateway": {"data_dir": str(tmp / "var"), "addresses": ["support@example.com"],
                                "unknown_senders": "register"},
                    "database": {"url": url},
                    "outbound": {"relay_host": "127.0.0.1", "relay_port": port, "relay_security": "none",
                                 "batch_size": 1000}}, base_dir=tmp)
    app = build_app(cfg)
    upgrade(app.engine)
    return app


def setup_ticket(app: App, watchers: int) -> int:
    from gateway.tickets import Directory, Tickets

    with app.sessions() as s, s.begin():
        d = Directory(s, app.clock)
        t = Tickets(s, clock=app.clock, listeners=[])  # no acknowledgement for the set-up
        rep = d.add_contact("reporter@customer.example", name="Rita Reporter")
        ticket = t.create(subject="Printer on fire", reporter=rep, description="It burns.")
        for i in range(watchers):
            t.add_watcher(ticket, d.add_contact(f"watcher{i:03d}@customer.example", name=f"Watcher {i}"),
                          vouched="added by staff")  # the gateway may mail them (gateway.guard.relay)
        d.add_contact("staff@example.com", name="Sam Staff", staff=True)
        return ticket.number


def one_run(app: App, sink: Sink, number: int, expected: int) -> dict[str, float]:
    from sqlalchemy import select

    from gateway.models import OutboxMail
    from gateway.outbound import deliver_due
    from gateway.tickets import Directory, Tickets

    start_count = len(sink.received)
    t0 = time.perf_counter()
    c0 = time.process_time()
    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        staff = Directory(s, app.clock).contact("staff@example.com")
        ticket = t.get(number)
        assert staff is not None and ticket is not None  # made by setup_ticket
        t.add_comment(ticket, author=staff, author_email=staff.email, body="We are on it.\n" * 20, source="cli")
    t1 = time.perf_counter()
    while True:
        c = deliver_due(app)
        if c.claimed == 0:
            break
    sink.wait_for(start_count + expected, timeout=120)
    t2 = time.perf_counter()
    c2 = time.process_time()
    got = len(sink.received) - start_count
    assert got == expected, f"sink got {got} of {expected}"
    with app.sessions() as s:
        ids = list(s.scalars(select(OutboxMail.id).where(OutboxMail.status == "sent")
                             .order_by(OutboxMail.id.desc()).limit(expected)))
        raws = [r for r in s.scalars(select(OutboxMail.raw).where(OutboxMail.id.in_(ids))) if r is not None]
    # baseline: the same bytes through a plain smtplib client, one connection
    b0 = time.perf_counter()
    bc0 = time.process_time()
    with smtplib.SMTP("127.0.0.1", sink.port) as conn:
        for i, raw in enumerate(raws):
            conn.sendmail("bench@example.com", [f"watcher{i:03d}@customer.example"], raw)
    b1 = time.perf_counter()
    bc1 = time.process_time()
    n = len(raws)
    return {"enqueue_s": t1 - t0, "deliver_s": t2 - t1, "total_s": t2 - t0, "outbox_mps": expected / (t2 - t1),
            "end_to_end_mps": expected / (t2 - t0), "baseline_mps": n / (b1 - b0),
            "bytes_per_mail": sum(map(len, raws)) / max(1, n),
            # CPU of this process (the sink's thread included in both) per mail: what load on the machine costs
            "cpu_ms_per_mail": (c2 - c0) * 1000 / expected, "baseline_cpu_ms_per_mail": (bc1 - bc0) * 1000 / max(1, n),
            "ratio": (expected / (t2 - t1)) / (n / (b1 - b0))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--db-url", help="database (default: a fresh SQLite file); must be an empty database")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from gateway.outbound.sink import Sink

    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as d, Sink() as sink:
        app = build(args.db_url, Path(d), sink.port)
        number = setup_ticket(app, args.watchers)
        expected = args.watchers + 1  # the reporter and every watcher; never the author
        one_run(app, sink, number, expected)  # warm-up (imports, template compilation, connections)
        results = [one_run(app, sink, number, expected) for _ in range(args.runs)]
        app.close()
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"public comment -> {expected} recipients ({args.watchers} watchers), {args.runs} runs, medians, "
          f"database {args.db_url.split('://')[0] if args.db_url else 'sqlite'}")
    print(f"  enqueue (comment transaction, {expected} rows written):         {med['enqueue_s'] * 1000:8.1f} ms")
    print(f"  delivery (deliver_due: build+store+send until the sink has all): {med['deliver_s'] * 1000:8.1f} ms")
    print(f"  total (comment -> last mail accepted):                        {med['total_s'] * 1000:8.1f} ms")
    print(f"  outbox delivery rate: {med['outbox_mps']:8.0f} mails/s   "
          f"end to end: {med['end_to_end_mps']:8.0f} mails/s")
    print(f"  baseline (plain smtplib, same bytes, same sink): {med['baseline_mps']:8.0f} mails/s   "
          f"ratio outbox/baseline: {med['outbox_mps'] / med['baseline_mps']:.2f}")
    print("  ratio per run: " + ", ".join(f"{r['ratio']:.2f}" for r in results))
    print(f"  CPU per mail (this process, the sink included): outbox {med['cpu_ms_per_mail']:.2f} ms "
          f"(comment transaction included), baseline {med['baseline_cpu_ms_per_mail']:.2f} ms")
    print(f"  mail size: {med['bytes_per_mail']:.0f} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

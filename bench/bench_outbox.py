"""Benchmark (not a test): a public comment on a ticket with 200 watchers, delivered through the outbox.

Each round, against the same SMTP sink running in a process of its own (so neither side shares its GIL or its
CPU time with the sink):
* gateway: the comment's transaction (one outbox row per recipient), then the delivery job as `serve` runs it
  (`deliver_due` with the transport kept across rounds) until the sink holds every mail: rendering, building,
  DKIM signing when --dkim, storing the bytes, sending, recording each mail sent as the relay accepts it;
* baseline: a plain smtplib client sending the very same mails -- each row's envelope sender, recipient and
  stored bytes, per-recipient headers included -- over one kept connection to the same sink, one
  sendmail() per mail.
The sink hashes what it receives (envelope and bytes); the two sides of a round must hash the same, or the
run stops. Reported: absolute rates, the ratio per round and the median, the best round of each side, CPU
of this process, the load average before and after.

The sink advertises PIPELINING, as Postfix does (--no-pipelining: it does not); smtplib never pipelines.

    .venv/bin/python bench/bench_outbox.py [--watchers 200] [--runs 7] [--dkim] [--no-pipelining] [--db-url URL]
    .venv/bin/python bench/bench_outbox.py --profile FILE   # cProfile of the gateway's delivery rounds
"""

from __future__ import annotations

import argparse
import hashlib
import os
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.outbound.sender import Transport

ROOT = Path(__file__).resolve().parents[1]


# The sink: a process of its own ---------------------------------------------------------------------------
class _Handler:
    def __init__(self, pipelining: bool) -> None:
        self.pipelining = pipelining
        self.lock = threading.Condition()
        self.count = 0
        self.digests: list[bytes] = []

    async def handle_EHLO(self, server: Any, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data = envelope.original_content or b""
        h = hashlib.sha256(f"{envelope.mail_from}\0{','.join(envelope.rcpt_tos)}\0".encode() + data).digest()
        with self.lock:
            self.digests.append(h)
            self.count += 1
            self.lock.notify_all()
        return "250 2.0.0 Ok: queued"


def serve_sink(pipelining: bool) -> int:
    """`--sink`: an aiosmtpd server on a free loopback port; prints the port, then answers on stdin/stdout:
    `reset` -> `ok`; `wait N` -> `<count> <sha256 of the sorted mail digests> <CPU seconds of this process>`
    once N mails arrived since the reset (or after 120 s)."""
    from aiosmtpd.controller import Controller

    from gateway.outbound.sink import free_port

    handler = _Handler(pipelining)
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, decode_data=False, data_size_limit=0,
                            ready_timeout=10)
    controller.start()
    print(port, flush=True)
    try:
        for line in sys.stdin:
            cmd, *args = line.split()
            with handler.lock:
                if cmd == "reset":
                    handler.count, handler.digests = 0, []
                    print("ok", flush=True)
                elif cmd == "wait":
                    n, deadline = int(args[0]), time.monotonic() + 120
                    while handler.count < n and time.monotonic() < deadline:
                        handler.lock.wait(deadline - time.monotonic())
                    total = hashlib.sha256(b"".join(sorted(handler.digests))).hexdigest()
                    print(handler.count, total, time.process_time(), flush=True)
    finally:
        controller.stop()
    return 0


class SinkProcess:
    def __init__(self, pipelining: bool) -> None:
        argv = [sys.executable, str(Path(__file__).resolve()), "--sink"] + ([] if pipelining else ["--no-pipelining"])
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        self.port = int(self._line())

    def _line(self) -> str:
        out: IO[str] | None = self.proc.stdout
        assert out is not None
        line = out.readline()
        if not line:
            raise RuntimeError("the sink process ended")
        return line.strip()

    def ask(self, cmd: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self._line()

    def reset(self) -> None:
        assert self.ask("reset") == "ok"

    def wait(self, n: int) -> tuple[int, str, float]:
        count, digest, cpu = self.ask(f"wait {n}").split()
        return int(count), digest, float(cpu)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(10)


# The gateway ------------------------------------------------------------------------------------------------
def build(db_url: str | None, tmp: Path, port: int, dkim: bool) -> App:
    from gateway.app import build_app
    from gateway.config import validate
    from gateway.migrate import upgrade

    url = db_url or f"sqlite:///{tmp / 'var' / 'gateway.db'}"
    outbound: dict[str, Any] = {"relay_host": "127.0.0.1", "relay_port": port, "relay_security": "none",
                                "batch_size": 1000}
    if dkim:
        key = tmp / "dkim.pem"
        subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(key), "2048"], check=True,
                       capture_output=True)
        outbound.update(dkim_key_file=str(key), dkim_selector="bench")
    cfg = validate({"gateway": {"data_dir": str(tmp / "var"), "addresses": ["support@example.com"],
                                "unknown_senders": "register"},
                    "database": {"url": url}, "outbound": outbound}, base_dir=tmp)
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


def comment(app: App, number: int) -> None:
    from gateway.tickets import Directory, Tickets

    with app.sessions() as s, s.begin():
        t = Tickets(s, clock=app.clock, listeners=app.listeners)
        staff = Directory(s, app.clock).contact("staff@example.com")
        ticket = t.get(number)
        assert staff is not None and ticket is not None  # made by setup_ticket
        t.add_comment(ticket, author=staff, author_email=staff.email, body="We are on it.\n" * 20, source="cli")


def gateway_round(app: App, transport: Transport, sink: SinkProcess, number: int, expected: int,
                  profiler: Any = None) -> dict[str, Any]:
    from gateway.outbound import deliver_due

    sink.reset()
    t0 = time.perf_counter()
    comment(app, number)
    t1, c1 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    while deliver_due(app, transport=transport).claimed:  # the job of `serve` (gateway.outbound.feature)
        pass
    if profiler is not None:
        profiler.disable()
    got, digest, _ = sink.wait(expected)
    t2, c2 = time.perf_counter(), time.process_time()
    assert got == expected, f"sink got {got} of {expected}"
    return {"enqueue_s": t1 - t0, "deliver_s": t2 - t1, "mps": expected / (t2 - t1), "e2e_mps": expected / (t2 - t0),
            "cpu_ms": (c2 - c1) * 1000 / expected, "digest": digest}


def sent_mails(app: App, expected: int) -> list[tuple[str, str, bytes]]:
    """The last round's mails as the gateway sent them: envelope sender, recipient and stored bytes."""
    from sqlalchemy import select

    from gateway.models import OutboxMail

    with app.sessions() as s:
        rows = list(s.execute(select(OutboxMail.envelope_from, OutboxMail.recipient, OutboxMail.raw)
                              .where(OutboxMail.status == "sent").order_by(OutboxMail.id.desc()).limit(expected)))
    assert all(r.raw for r in rows)
    return [(r.envelope_from, r.recipient, r.raw) for r in reversed(rows)]


def baseline_round(conn: smtplib.SMTP, sink: SinkProcess, mails: list[tuple[str, str, bytes]]) -> dict[str, Any]:
    sink.reset()
    t0, c0 = time.perf_counter(), time.process_time()
    for env_from, rcpt, raw in mails:
        conn.sendmail(env_from, [rcpt], raw)
    got, digest, _ = sink.wait(len(mails))
    t1, c1 = time.perf_counter(), time.process_time()
    assert got == len(mails)
    return {"mps": len(mails) / (t1 - t0), "cpu_ms": (c1 - c0) * 1000 / len(mails), "digest": digest}


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def run(args: argparse.Namespace) -> int:
    from gateway.outbound.sender import make_transport

    load_before = loadavg()
    sink = SinkProcess(not args.no_pipelining)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-outbox-") as d:
            app = build(args.db_url, Path(d), sink.port, args.dkim)
            number = setup_ticket(app, args.watchers)
            expected = args.watchers + 1  # the reporter and every watcher; never the author
            transport = make_transport(app)  # kept across rounds, as `serve` keeps it
            conn = smtplib.SMTP("127.0.0.1", sink.port)
            try:
                gateway_round(app, transport, sink, number, expected)  # warm-up: imports, templates, connection
                baseline_round(conn, sink, sent_mails(app, expected))
                rounds: list[tuple[dict[str, Any], dict[str, Any], float]] = []
                for _ in range(args.runs):
                    g = gateway_round(app, transport, sink, number, expected, profiler)
                    mails = sent_mails(app, expected)
                    b = baseline_round(conn, sink, mails)
                    if g["digest"] != b["digest"]:
                        raise SystemExit("the sink received different mails from the gateway and the baseline")
                    rounds.append((g, b, sum(len(m[2]) for m in mails) / len(mails)))
            finally:
                conn.quit()
                transport.close()
                app.close()
    finally:
        sink.close()
    load_after = loadavg()
    ratios = [g["mps"] / b["mps"] for g, b, _ in rounds]

    def med(side: int, key: str) -> float:
        return statistics.median((r[0] if side == 0 else r[1])[key] for r in rounds)

    print(f"public comment -> {expected} recipients ({args.watchers} watchers), {args.runs} rounds, medians; "
          f"database {args.db_url.split('://')[0] if args.db_url else 'sqlite'}; DKIM {'on' if args.dkim else 'off'}; "
          f"sink in its own process, PIPELINING {'not ' if args.no_pipelining else ''}advertised")
    print(f"  load average before {load_before}, after {load_after}; {os.cpu_count()} CPUs")
    print(f"  enqueue (comment transaction, {expected} rows):          {med(0, 'enqueue_s') * 1000:8.1f} ms")
    print(f"  delivery (job rounds until the sink holds every mail): {med(0, 'deliver_s') * 1000:8.1f} ms")
    print(f"  gateway outbox: {med(0, 'mps'):7.0f} mails/s (end to end {med(0, 'e2e_mps'):.0f}), "
          f"CPU {med(0, 'cpu_ms'):.2f} ms/mail")
    print(f"  plain smtplib, same mails, same sink: {med(1, 'mps'):7.0f} mails/s, CPU {med(1, 'cpu_ms'):.2f} ms/mail")
    print(f"  ratio gateway/smtplib: median {statistics.median(ratios):.2f}; per round "
          + ", ".join(f"{x:.2f}" for x in ratios))
    best_g, best_b = max(g["mps"] for g, _, _ in rounds), max(b["mps"] for _, b, _ in rounds)
    print(f"  best round of each side (the least disturbed by the machine's load): gateway {best_g:.0f}, "
          f"smtplib {best_b:.0f} mails/s, ratio {best_g / best_b:.2f}")
    print(f"  mail size: {statistics.median(r[2] for r in rounds):.0f} bytes; "
          "the same mails on both sides in every round (the sink's hash)")
    if profiler is not None:
        import pstats

        profiler.dump_stats(args.profile)
        pstats.Stats(args.profile).sort_stats("cumulative").print_stats(40)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--watchers", type=int, default=200)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--dkim", action="store_true", help="sign with a fresh 2048-bit RSA key")
    ap.add_argument("--no-pipelining", action="store_true", help="the sink does not advertise PIPELINING")
    ap.add_argument("--db-url", help="database (default: a fresh SQLite file); must be an empty database")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the gateway's delivery rounds into FILE")
    ap.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.sink:
        return serve_sink(not args.no_pipelining)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

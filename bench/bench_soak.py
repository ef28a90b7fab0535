#!/usr/bin/env python3
"""Soak: RSS of `serve` (and its preparation worker) under a steady mail rate (a benchmark, not a test).

    .venv/bin/python bench/bench_soak.py [--minutes 60] [--rate 5] [--warmup 5] [--every 10] [-n 2000]

A fresh `ticket-gateway serve` (free port, SQLite in bench/out, or --db-url) gets --rate mails per second over
one SMTP connection (paced: mail k leaves at t0 + k / rate) for --minutes, from the seeded synthetic corpus
(/work/shared/bench/gen_corpus.py, -n mails, sent round and round; each send gets a Message-ID of its own, so
every mail is a new mail, not a duplicate). Every --every seconds the RSS (VmRSS) of serve and of every
process under it is read. Reported: the RSS after the warm-up (--warmup minutes) and at the end, the growth
in %, the slope of a least-squares line through the samples after the warm-up (MiB/min), the same for serve
alone, the mails sent/refused, and whether threading kept up (mails still `received` at the end).
Target (issue 14): < 10 % growth over an hour after the warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_smtp  # noqa: E402
from bench_memory import Sampler  # noqa: E402
from bench_smtp import ADDRESS, GEN, OUT, Serve, _sender, crlf  # noqa: E402

bench_smtp.wait_220.__defaults__ = (300,)  # a loaded machine (and tracemalloc) starts serve slowly

MSGID = re.compile(rb"^Message-ID:[^\r\n]*\r\n", re.I | re.M)


def corpus(n: int) -> list[tuple[str, bytes]]:
    d = OUT / f"corpus-{n}"
    if not (d / "manifest.tsv").exists():
        print(f"generating {n} mails into {d} ...", flush=True)
        subprocess.run([sys.executable, str(GEN), str(d), "-n", str(n)], check=True, stdout=subprocess.DEVNULL)
    return [(_sender(str(p)), crlf(p.read_bytes())) for p in sorted((d / "eml").glob("*.eml"))]


def fresh_id(raw: bytes, k: int) -> bytes:
    new = b"Message-ID: <soak-%d-%d@bench.example>\r\n" % (os.getpid(), k)
    out, n = MSGID.subn(new, raw, count=1)
    return out if n else new + raw


class Sender(threading.Thread):
    """One SMTP connection sending the corpus round and round at `rate` mails per second until `until`."""

    def __init__(self, port: int, mails: list[tuple[str, bytes]], rate: float, until: float) -> None:
        super().__init__(daemon=True)
        self.port, self.mails, self.rate, self.until = port, mails, rate, until
        self.ok = self.refused = self.late = 0

    def run(self) -> None:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=120)
        t0 = time.time()
        k = 0
        while True:
            due = t0 + k / self.rate
            if due >= self.until or time.time() >= self.until:  # a server that falls behind: stop on time
                break
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            elif wait < -1.0:
                self.late += 1
            sender, raw = self.mails[k % len(self.mails)]
            try:
                s.sendmail(sender, [ADDRESS], fresh_id(raw, k))
                self.ok += 1
            except smtplib.SMTPResponseException:
                self.refused += 1
            except (OSError, smtplib.SMTPException):
                self.refused += 1
                s = smtplib.SMTP("127.0.0.1", self.port, timeout=120)
            k += 1
        try:
            s.quit()
        except Exception:  # noqa: BLE001
            pass


def trace_diff(prefix: str, top: int = 15) -> None:
    import tracemalloc

    first, last = tracemalloc.Snapshot.load(f"{prefix}.1"), tracemalloc.Snapshot.load(f"{prefix}.2")
    print("allocations that grew in serve after the warm-up (tracemalloc):")
    for stat in last.compare_to(first, "traceback")[:top]:
        print(f"  {stat.size_diff / 1024:+.0f} KiB ({stat.count_diff:+d} blocks), now {stat.size / 1024:.0f} KiB")
        for line in stat.traceback.format()[-6:]:
            print("     ", line)


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (minute, MiB) points, MiB per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / sxx if sxx else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=5.0, help="mails per second (default 5)")
    ap.add_argument("--warmup", type=float, default=5.0, help="minutes before the start figure (default 5)")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples (default 10)")
    ap.add_argument("-n", type=int, default=2000, help="corpus size (default 2000)")
    ap.add_argument("--db-url", help="store for serve (default: SQLite in bench/out)")
    ap.add_argument("--serve-option", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", help="JSON report path (default bench/out/soak/report.json)")
    ap.add_argument("--trace", action="store_true",
                    help="debug: tracemalloc in serve (bench/tracehook); the allocations that grew between the end "
                         "of the warm-up and the end are listed")
    args = ap.parse_args()
    mails = corpus(args.n)
    work = OUT / "soak"
    dump = str(work / "trace")
    if args.trace:  # every Python process started from here on (serve, its worker) traces; serve gets SIGUSR2
        os.environ["TG_TRACE_DUMP"] = dump
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE / "tracehook"), os.environ.get("PYTHONPATH", "")])
    print(f"soak: {args.minutes:g} min at {args.rate:g} mail/s, {len(mails)} distinct mails, warm-up "
          f"{args.warmup:g} min, sample every {args.every:g}s; load {Path('/proc/loadavg').read_text().strip()}",
          flush=True)
    srv = Serve(work / "serve", args.db_url, args.serve_option)
    traced = 0
    samples: list[dict] = []
    try:
        time.sleep(2.0)
        sampler = Sampler(srv.proc.pid)
        root, kids = sampler.sample()
        idle = (root + kids) / 1024
        t0 = time.time()
        sender = Sender(srv.port, mails, args.rate, t0 + args.minutes * 60)
        sender.start()
        while sender.is_alive():
            time.sleep(max(0.0, t0 + (len(samples) + 1) * args.every - time.time()))
            root, kids = sampler.sample()
            m = (time.time() - t0) / 60
            if args.trace and not traced and m >= args.warmup:
                os.kill(srv.proc.pid, signal.SIGUSR2)
                traced = 1
            samples.append({"minute": m, "total_mib": (root + kids) / 1024, "serve_mib": root / 1024,
                            "children_mib": kids / 1024, "load": Path("/proc/loadavg").read_text().split()[0]})
            if len(samples) % max(1, int(60 / args.every)) == 0:
                s = samples[-1]
                print(f"  {m:5.1f} min: serve+worker {s['total_mib']:.1f} MiB (serve {s['serve_mib']:.1f}, "
                      f"worker {s['children_mib']:.1f}); sent {sender.ok}, refused {sender.refused}; "
                      f"load {s['load']}", flush=True)
        sender.join()
        time.sleep(2.0)
        if args.trace:
            os.kill(srv.proc.pid, signal.SIGUSR2)
            time.sleep(10.0)
            trace_diff(f"{dump}.{srv.proc.pid}")
        pending = srv.pending()
        _, outcomes, _ = srv.latencies()
    finally:
        srv.stop()
    after = [s for s in samples if s["minute"] >= args.warmup] or samples
    start, end = after[0], after[-1]
    growth = 100 * (end["total_mib"] / start["total_mib"] - 1)
    growth_serve = 100 * (end["serve_mib"] / start["serve_mib"] - 1)
    k = slope([(s["minute"], s["total_mib"]) for s in after])
    k_serve = slope([(s["minute"], s["serve_mib"]) for s in after])
    peak = max(s["total_mib"] for s in samples)
    report = {"minutes": args.minutes, "rate": args.rate, "sent": sender.ok, "refused": sender.refused,
              "late": sender.late, "pending_at_end": pending, "outcomes": outcomes, "idle_mib": idle,
              "start_minute": start["minute"], "start_mib": start["total_mib"], "end_mib": end["total_mib"],
              "growth_pct": growth, "slope_mib_per_min": k, "serve_start_mib": start["serve_mib"],
              "serve_end_mib": end["serve_mib"], "serve_growth_pct": growth_serve,
              "serve_slope_mib_per_min": k_serve, "peak_mib": peak, "samples": samples,
              "loadavg_end": Path("/proc/loadavg").read_text().strip()}
    verdict = "OK" if growth < 10 else "ABOVE TARGET"
    print(f"idle {idle:.1f} MiB; after warm-up (minute {start['minute']:.1f}) {start['total_mib']:.1f} MiB -> end "
          f"(minute {end['minute']:.1f}) {end['total_mib']:.1f} MiB: growth {growth:+.1f}% (target < 10%) {verdict}, "
          f"slope {k:+.3f} MiB/min; serve alone {start['serve_mib']:.1f} -> {end['serve_mib']:.1f} MiB "
          f"({growth_serve:+.1f}%, {k_serve:+.3f} MiB/min); peak {peak:.1f} MiB", flush=True)
    print(f"sent {sender.ok} ({sender.refused} refused, {sender.late} more than 1 s late), still received at the "
          f"end {pending}; outcomes {outcomes}; load {report['loadavg_end']}", flush=True)
    out = Path(args.out) if args.out else work / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {out}")


if __name__ == "__main__":
    main()

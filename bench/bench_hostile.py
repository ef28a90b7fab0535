#!/usr/bin/env python3
"""Complexity bombs against a real `serve` (issue 12, point 4; not a test).

    .venv/bin/python bench/bench_hostile.py [--only NAME,...] [--wait 120] [--ordinary 5]

Same run: `ticket-gateway serve` on a fresh SQLite store with an SMTP listener (bench_smtp.Serve).
1. Baseline: ordinary mails sent one after the other with no bomb: their 250 latency (DATA sent -> 250) and
   ticket latency (DATA sent -> the mail's row processed), median and max.
2. For each bomb: the bomb is sent, then (while it is processed, 0.3 s later) one ordinary mail; reported are
   the bomb's own processing time (its row received_at -> processed_at, or "> WAIT" when it was not done
   within --wait seconds), its outcome and whether a bound was noted in its trace, and the ordinary mail's
   250 and ticket latencies next to the baseline (targets: 250 < 1 s, ticket < 3 s).
"""

from __future__ import annotations

import argparse
import smtplib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_smtp import ADDRESS, OUT, Serve  # noqa: E402

_SEQ = [0]


def _head(sender: str, subject: str, extra: str = "") -> str:
    _SEQ[0] += 1
    return (f"From: {sender}\r\nTo: {ADDRESS}\r\nSubject: {subject}\r\n"
            f"Message-ID: <bench-{_SEQ[0]}-{time.time_ns()}@bench.example>\r\n"
            "Date: Mon, 02 Nov 2026 09:00:00 +0000\r\n" + extra)


def ordinary(i: int) -> bytes:
    return (_head(f"Customer {i} <customer{i}@ordinary.example>", f"Ordinary question {i}")
            + "Content-Type: text/plain; charset=utf-8\r\n\r\nHello, my printer is on fire.\r\n").encode()


def cc_bomb(n: int) -> bytes:
    cc = ",\r\n ".join(f"Person {i} <person{i}@victims.example>" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} Cc", f"Cc: {cc}\r\n")
            + "\r\nsee Cc\r\n").encode()


def to_bomb(n: int) -> bytes:
    to = ",\r\n ".join(f"p{i}@victims.example" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} To", f"Resent-To: x@x.example\r\nCc: {to}\r\n")
            .replace(f"To: {ADDRESS}\r\n", f"To: {ADDRESS},\r\n {to}\r\n", 1) + "\r\nsee To\r\n").encode()


def references_bomb(n: int) -> bytes:
    refs = "\r\n ".join(f"<ref{i}.{i * 7919}@threads.example>" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} References",
                  f"In-Reply-To: <ref{n - 1}.0@threads.example>\r\nReferences: {refs}\r\n")
            + "\r\nsee References\r\n").encode()


def div_bomb(n: int) -> bytes:
    html = "<html><body>" + "<div>" * n + "deep" + "</div>" * n + "</body></html>"
    return (_head("Bomber <bomber@evil.example>", f"{n} nested div",
                  "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n") + "\r\n" + html + "\r\n").encode()


def html_size_bomb(mib: int) -> bytes:
    body = ("<p>" + "word " * 200 + "</p>\r\n") * (mib * 1024 * 1024 // 1010)
    return (_head("Bomber <bomber@evil.example>", f"{mib} MiB of HTML",
                  "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n") + "\r\n" + body).encode()


def rfc2231_bomb(n: int) -> bytes:
    params = ";\r\n ".join(f"name*{i}*=part{i}" if i else "name*0*=utf-8''part0" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} RFC 2231 continuations",
                  'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n')
            + "\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attachment\r\n--b\r\n"
            + f"Content-Type: application/octet-stream;\r\n {params}\r\nContent-Disposition: attachment;\r\n "
            + params.replace("name", "filename") + "\r\n"
            + "Content-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n--b--\r\n").encode()


def header_bomb(n: int) -> bytes:
    junk = "".join(f"X-Junk-{i}: value {i}\r\n" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} header fields", junk) + "\r\nsee headers\r\n").encode()


def parts_bomb(n: int) -> bytes:
    parts = "".join(f"--b\r\nContent-Type: text/plain; name=\"p{i}.txt\"\r\nContent-Disposition: attachment\r\n\r\n"
                    f"part {i}\r\n" for i in range(n))
    return (_head("Bomber <bomber@evil.example>", f"{n} MIME parts",
                  'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n')
            + "\r\n" + parts + "--b--\r\n").encode()


BOMBS: dict[str, Callable[[], bytes]] = {
    "cc-3000": lambda: cc_bomb(3000),
    "cc-5000": lambda: cc_bomb(5000),
    "cc-40000": lambda: cc_bomb(40000),
    "to-40000": lambda: to_bomb(40000),
    "references-100000": lambda: references_bomb(100000),
    "div-100000": lambda: div_bomb(100000),
    "html-20MiB": lambda: html_size_bomb(20),
    "rfc2231-10000": lambda: rfc2231_bomb(10000),
    "headers-100000": lambda: header_bomb(100000),
    "parts-1000": lambda: parts_bomb(1000),
}


def _send(port: int, sender: str, raw: bytes) -> float:
    """Seconds from the start of the SMTP transaction to the 250 after DATA."""
    with smtplib.SMTP("127.0.0.1", port, timeout=600) as s:
        s.ehlo()
        t0 = time.perf_counter()
        s.sendmail(sender, [ADDRESS], raw)
        return time.perf_counter() - t0


def _row(serve: Serve, subject_marker: bytes, raw: bytes) -> tuple[str, float | None, list[str]] | None:
    """(outcome, processing seconds, trace) of the stored mail whose Message-ID is that of `raw`."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    from gateway.models import InboundMail

    mid = raw.split(b"Message-ID: <", 1)[1].split(b">", 1)[0].decode()
    try:
        with serve.app.sessions() as s:
            m = s.scalar(select(InboundMail).where(InboundMail.message_id == mid))
            if m is None:
                return None
            took = (m.processed_at - m.received_at).total_seconds() if m.processed_at and m.received_at else None
            return m.outcome, took, list(m.trace or [])
    except OperationalError:  # the service holds the write lock (SQLite) longer than the busy timeout
        return None


def _wait(serve: Serve, raw: bytes, timeout: float) -> tuple[str, float | None, list[str]] | None:
    end = time.monotonic() + timeout
    while True:
        r = _row(serve, b"", raw)
        if r is not None and r[0] != "received":
            return r
        if time.monotonic() > end:
            return r
        time.sleep(0.05)


def ordinary_latency(serve: Serve, i: int, timeout: float) -> tuple[float, float | None]:
    raw = ordinary(i)
    t0 = time.perf_counter()
    l250 = _send(serve.port, f"customer{i}@ordinary.example", raw)
    r = _wait(serve, raw, timeout)
    done = time.perf_counter() - t0 if r is not None and r[0] != "received" else None
    return l250, done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated bomb names (default: all)")
    ap.add_argument("--wait", type=float, default=120.0, help="seconds to wait for one bomb")
    ap.add_argument("--ordinary", type=int, default=5, help="ordinary mails in the baseline")
    ap.add_argument("--serve-option", action="append", default=[], help="extra line for the [serve] section")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BOMBS)
    serve = Serve(OUT / "hostile", None, args.serve_option)
    try:
        base = [ordinary_latency(serve, i, args.wait) for i in range(args.ordinary)]
        b250 = sorted(b[0] for b in base)
        bdone = sorted(b[1] or float("inf") for b in base)
        print(f"baseline (no bomb, {len(base)} ordinary mails): 250 median {b250[len(b250) // 2]:.3f} s "
              f"max {b250[-1]:.3f} s; ticket median {bdone[len(bdone) // 2]:.3f} s max {bdone[-1]:.3f} s")
        print(f"{'bomb':<20} {'size':>9} {'bomb 250':>9} {'bomb took':>10} {'outcome':<12} "
              f"{'ord 250':>8} {'x base':>7} {'ord ticket':>10} {'x base':>7}  bound noted")
        for k, name in enumerate(names):
            raw = BOMBS[name]()
            box: dict[str, float] = {}

            def bomb(r: bytes = raw, out: dict[str, float] = box) -> None:
                out["250"] = _send(serve.port, "bomber@evil.example", r)

            th = threading.Thread(target=bomb)
            th.start()
            time.sleep(0.3)
            o250, odone = ordinary_latency(serve, 100 + k, args.wait)
            th.join()
            r = _wait(serve, raw, args.wait)
            outcome, took, trace = r if r is not None else ("?", None, [])
            took_s = f"{took:.2f} s" if took is not None and outcome != "received" else f"> {args.wait:.0f} s"
            bound = next((line for line in trace if "bound" in line or "limit" in line or "truncat" in line), "")
            done_s = f"{odone:.3f} s" if odone is not None else f"> {args.wait:.0f} s"
            done_x = f"{odone / bdone[len(bdone) // 2]:.1f}" if odone is not None else "-"
            print(f"{name:<20} {len(raw) / 1024:>7.0f}KB {box.get('250', float('nan')):>8.3f}s {took_s:>10} "
                  f"{outcome:<12} {o250:>7.3f}s {o250 / b250[len(b250) // 2]:>7.1f} {done_s:>10} {done_x:>7}  "
                  f"{bound[:110]}", flush=True)
            if outcome == "received":  # still running: the rest would measure this bomb, not theirs
                print("  (the bomb is still being processed: stopping here)")
                break
    finally:
        serve.stop()


if __name__ == "__main__":
    main()

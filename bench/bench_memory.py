#!/usr/bin/env python3
"""Peak memory of `serve` receiving one 25 MB mail, for four shapes of mail (a benchmark, not a test).

    .venv/bin/python bench/bench_memory.py [--size-mib 25] [--shapes attachment,parts,text,html] [--db-url URL]

For each shape a fresh `ticket-gateway serve` (free port, SQLite in bench/out) is started and left idle for a
moment (its baseline), then one mail of that shape is sent over SMTP and the run waits until it is threaded.
All along, every 50 ms, the RSS (VmRSS of /proc/<pid>/status) of serve and of every process under it (the
preparation worker, a fresh interpreter) is read: the peak of the sum is what the host pays. Reported per
shape: that peak, the peaks of serve alone and of its children, the idle baseline of the same serve, and
whether the mail became a ticket with its attachment(s) stored (rows and blob files of the right sizes).
Target (issue 14): peak of serve + worker < 150 MiB for every shape.

Shapes (each --size-mib of raw mail, CRLF):
  attachment  one base64 attachment (random bytes) and a line of text
  parts       many small parts: 900 base64 attachments (under limits.max_mime_parts = 1000)
  text        one text/plain body (quoted-printable free, 8bit lines of prose)
  html        one text/html body (nested markup, links, tables)
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import smtplib
import sys
import threading
import time
from email.message import EmailMessage
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_smtp import ADDRESS, OUT, Serve, crlf  # noqa: E402

SHAPES = ("attachment", "parts", "text", "html")
PARTS = 900


def children(pid: int) -> list[int]:
    """Every process under pid (children, their children...)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        kids = []
        try:  # the children of every thread: serve starts its worker from a thread
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    kids += Path(f"/proc/{p}/task/{task}/children").read_text().split()
                except OSError:
                    pass
        except OSError:
            pass
        for k in kids:
            out.append(int(k))
            todo.append(int(k))
    return out


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Sampler:
    """RSS of a process tree every `every` seconds, in a thread; peaks of the sum, of the root, of the rest."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        self.pid, self.every = pid, every
        self.peak_sum = self.peak_root = self.peak_kids = 0
        self.samples = 0
        self.series: list[tuple[float, int, int]] = []  # (seconds, serve MiB, children MiB)
        self.t0 = time.monotonic()
        self.max_kids = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        root = status_kib(self.pid, "VmRSS")
        # a child still running serve's program is a fork that has not exec'd the worker yet (subprocess.Popen):
        # its pages are serve's, counted once already (read as its own, the sum jumps by serve's size for a moment)
        kids = [k for k in children(self.pid) if cmdline(k) != cmdline(self.pid)]
        self.max_kids = max(self.max_kids, len(kids))
        return root, sum(status_kib(k, "VmRSS") for k in kids)

    def _run(self) -> None:
        while not self._stop.is_set():
            root, kids = self.sample()
            self.samples += 1
            self.series.append((round(time.monotonic() - self.t0, 2), root // 1024, kids // 1024))
            self.peak_root = max(self.peak_root, root)
            self.peak_kids = max(self.peak_kids, kids)
            self.peak_sum = max(self.peak_sum, root + kids)
            self._stop.wait(self.every)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _msg(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Big Sender <big@customer.example>"
    msg["To"] = ADDRESS
    msg["Subject"] = subject
    msg["Message-ID"] = email.utils.make_msgid(domain="customer.example")
    return msg


PROSE = ("The quarterly report attached to the previous message contains figures that do not add up; "
         "could you please check the totals in section %d and tell us which version is the right one? ")


def shape_mail(shape: str, size: int) -> tuple[bytes, int]:
    """(raw mail of about `size` bytes, number of attachments it carries)."""
    if shape == "attachment":
        msg = _msg("A very large attachment")
        msg.set_content("See the attached disk image.\n")
        msg.add_attachment(os.urandom(int(size * 3 / 4) - 4000), maintype="application",
                           subtype="octet-stream", filename="disk.img")
        return crlf(bytes(msg)), 1
    if shape == "parts":
        msg = _msg("Many small attachments")
        msg.set_content("Here are the scans, one per page.\n")
        each = int(size * 3 / 4 / PARTS) - 300
        for i in range(PARTS):
            msg.add_attachment(os.urandom(each), maintype="application", subtype="octet-stream",
                               filename=f"page-{i:04d}.bin")
        return crlf(bytes(msg)), PARTS
    if shape == "text":
        lines = []
        n = 0
        total = 0
        while total < size - 4000:
            line = (PROSE % n)[: 60 + n % 17] + "\n"
            lines.append(line)
            total += len(line) + 1
            n += 1
        raw = (f"From: Big Sender <big@customer.example>\nTo: {ADDRESS}\nSubject: A very long text\n"
               f"Message-ID: {email.utils.make_msgid(domain='customer.example')}\nMIME-Version: 1.0\n"
               "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + "".join(lines))
        return crlf(raw.encode()), 0
    if shape == "html":
        blocks = []
        total = 0
        n = 0
        while total < size - 4000:
            b = (f"<div class=\"row\"><table><tr><td><b>Item {n}</b></td><td><a href=\"https://shop.example/item/{n}"
                 f"\">{PROSE % n}</a></td></tr></table><p style=\"color:#333\">{PROSE % (n + 1)}</p></div>\n")
            blocks.append(b)
            total += len(b) + 1
            n += 1
        raw = (f"From: Big Sender <big@customer.example>\nTo: {ADDRESS}\nSubject: A very long HTML mail\n"
               f"Message-ID: {email.utils.make_msgid(domain='customer.example')}\nMIME-Version: 1.0\n"
               "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
               "<html><body>\n" + "".join(blocks) + "</body></html>\n")
        return crlf(raw.encode()), 0
    raise ValueError(shape)


def check_ticket(srv: Serve, n_attachments: int) -> dict:
    """The mail's outcome and ticket, and its attachments: rows on the ticket, blob files of the row sizes."""
    from sqlalchemy import select

    from gateway.models import Attachment, InboundMail

    with srv.app.sessions() as s:
        mails = s.execute(select(InboundMail.id, InboundMail.outcome, InboundMail.ticket_id,
                                 InboundMail.reason)).all()
        atts = s.execute(select(Attachment.ticket_id, Attachment.size, Attachment.sha256)).all()
    ok_blobs = 0
    for _, size, sha in atts:
        p = srv.app.config.attachments_dir / sha[:2] / sha[2:4] / sha
        if p.is_file() and p.stat().st_size == size:
            ok_blobs += 1
    ticket = mails[0].ticket_id if len(mails) == 1 else None
    ok = (len(mails) == 1 and ticket is not None and len(atts) == n_attachments
          and ok_blobs == n_attachments and all(a.ticket_id == ticket for a in atts))
    return {"mails": len(mails), "outcome": mails[0].outcome if mails else None,
            "reason": mails[0].reason if mails else None, "ticket": ticket, "attachments": len(atts),
            "blobs_ok": ok_blobs, "expected_attachments": n_attachments, "ok": ok}


def run_shape(shape: str, size: int, work: Path, db_url: str | None) -> dict:
    from gateway.mime import MAX_ATTACHMENTS

    raw, n_att = shape_mail(shape, size)
    n_att = min(n_att, MAX_ATTACHMENTS)  # the rest stay in the stored original (the gateway's bound)
    srv = Serve(work / f"serve-{shape}", db_url)
    try:
        time.sleep(3.0)  # idle: its start-up done, the worker started and warmed up
        idle = Sampler(srv.proc.pid)
        base_root, base_kids = idle.sample()
        sampler = Sampler(srv.proc.pid).start()
        t = time.time()
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=600) as s:
            s.sendmail("big@customer.example", [ADDRESS], raw)
        t250 = time.time() - t
        del raw
        srv.wait_threaded(timeout=900)
        t_done = time.time() - t
        time.sleep(1.0)  # what stays after the mail
        after_root, after_kids = sampler.sample()
        sampler.stop()
        hwm_root = status_kib(srv.proc.pid, "VmHWM")
        check = check_ticket(srv, n_att)
    finally:
        srv.stop()
    mib = 1024.0
    return {"shape": shape, "size_mib": size / 2**20, "baseline_mib": (base_root + base_kids) / mib,
            "baseline_serve_mib": base_root / mib, "baseline_worker_mib": base_kids / mib,
            "peak_mib": sampler.peak_sum / mib, "peak_serve_mib": sampler.peak_root / mib,
            "peak_children_mib": sampler.peak_kids / mib, "serve_vmhwm_mib": hwm_root / mib,
            "after_mib": (after_root + after_kids) / mib, "samples": sampler.samples,
            "seconds_to_250": t250, "seconds_to_ticket": t_done, "check": check, "series": sampler.series}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=float, default=25.0, help="raw size of each mail (default 25)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"which (default {','.join(SHAPES)})")
    ap.add_argument("--db-url", help="store for serve (default: SQLite in bench/out)")
    ap.add_argument("--target-mib", type=float, default=150.0)
    args = ap.parse_args()
    size = int(args.size_mib * 2**20)
    work = OUT / "memory"
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    rows = []
    for shape in [x.strip() for x in args.shapes.split(",") if x.strip()]:
        r = run_shape(shape, size, work, args.db_url)
        rows.append(r)
        c = r["check"]
        verdict = "OK" if r["peak_mib"] < args.target_mib else "ABOVE TARGET"
        print(f"{shape:10s} {r['size_mib']:.1f} MiB: peak serve+worker {r['peak_mib']:6.1f} MiB "
              f"(target < {args.target_mib:g}) {verdict}; idle baseline {r['baseline_mib']:.1f} MiB "
              f"(serve {r['baseline_serve_mib']:.1f} + worker {r['baseline_worker_mib']:.1f}) -> "
              f"+{r['peak_mib'] - r['baseline_mib']:.1f} MiB = {r['peak_mib'] / r['baseline_mib']:.2f}x; "
              f"peaks: serve {r['peak_serve_mib']:.1f} (VmHWM {r['serve_vmhwm_mib']:.1f}), children "
              f"{r['peak_children_mib']:.1f}; after {r['after_mib']:.1f} MiB; 250 after {r['seconds_to_250']:.1f}s, "
              f"ticket after {r['seconds_to_ticket']:.1f}s; outcome {c['outcome']} ticket {c['ticket']} "
              f"attachments {c['attachments']}/{c['expected_attachments']} blobs ok {c['blobs_ok']} "
              f"{'CHECK OK' if c['ok'] else 'CHECK FAILED: ' + str(c['reason'])}", flush=True)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "report.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"report: {work / 'report.json'}")
    if any(r["peak_mib"] >= args.target_mib or not r["check"]["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()

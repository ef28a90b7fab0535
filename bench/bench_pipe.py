#!/usr/bin/env python3
"""MTA pipe mode (issue 14): one `ticket-gateway ingest` process per mail against Roundup's `roundup-mailgw`
on the same mails, interleaved, in the same run.

    .venv/bin/python bench/bench_pipe.py [-n 200] [--seed 42]

1. Installs Roundup (PyPI) into a scratch virtualenv under bench/out/roundup-venv (reused when present) and makes
   a fresh `classic` tracker on SQLite in a temporary directory. Anonymous gets "Email Access" so that unknown
   senders become users and their mail an issue (as the gateway's `unknown_senders = "register"`), and Roundup's
   outgoing mail goes to its debug file instead of an SMTP server (the gateway queues its notifications in its
   outbox table: neither side talks SMTP).
2. Generates N mails with ../shared/bench/gen_corpus.py (bench/out/corpus-N-SEED, reused when present).
3. For every mail, in alternating order: `roundup-mailgw TRACKER < mail` and
   `ticket-gateway deliver --sender S --recipient R < mail` (the console script, as Postfix's pipe(8) runs it;
   `--ingest`: the synchronous `ingest -q` instead), each a fresh process; wall time, CPU time (user + system,
   with reaped children) and peak RSS from wait4. `deliver` exits once the mail is durable in the spool; no
   service runs, so a detached drainer stores the spooled mails meanwhile (its CPU competes with the
   processes measured, as on a real host), and the run waits until every mail is stored.
4. `python -c pass` as the floor of any Python process, measured in the same run.
Reports mean and median per mail for both, and the ratio roundup/gateway (issue 14's target: >= 4).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from email.parser import BytesHeaderParser
from email.utils import getaddresses
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEN = ROOT.parent / "shared" / "bench" / "gen_corpus.py"
OUT = ROOT / "bench" / "out"


def run_measured(cmd: list[str], stdin_path: Path | None,
                 env: dict[str, str] | None = None) -> tuple[float, float, float, int]:
    """(wall s, CPU s, peak RSS MiB, exit code) of one child process, from wait4."""
    t0 = time.perf_counter()
    with (stdin_path.open("rb") if stdin_path else open(os.devnull, "rb")) as fin:
        proc = subprocess.Popen(cmd, stdin=fin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        assert proc.stderr is not None  # PIPE
        err = proc.stderr.read()
        _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(f"exit {code}: {' '.join(cmd)}\n{err.decode(errors='replace')[-2000:]}\n")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, code


def roundup_venv() -> Path:
    venv = OUT / "roundup-venv"
    if not (venv / "bin" / "roundup-mailgw").exists():
        print("installing Roundup into", venv, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "roundup"], check=True)
    return venv


def make_tracker(venv: Path, where: Path) -> Path:
    tracker = where / "tracker"
    admin = str(venv / "bin" / "roundup-admin")
    subprocess.run([admin, "-i", str(tracker), "install", "classic", "sqlite"], check=True, capture_output=True)
    cfg = tracker / "config.ini"
    text = cfg.read_text()
    text = text.replace("[tracker]\n", "[tracker]\nweb = http://localhost:8917/tracker/\n", 1)
    text = text.replace("[mail]\n", "[mail]\ndomain = helpdesk.example.com\n", 1)
    text = re.sub(r"(?m)^debug = $", f"debug = {where / 'roundup-outgoing.txt'}", text)
    cfg.write_text(text)
    schema = tracker / "schema.py"
    schema.write_text(schema.read_text().replace("#db.security.addPermissionToRole('Anonymous', 'Email Access')",
                                                 "db.security.addPermissionToRole('Anonymous', 'Email Access')"))
    subprocess.run([admin, "-i", str(tracker), "initialise", "admin-password"], check=True, capture_output=True)
    return tracker


def envelope(path: Path) -> tuple[str, str]:
    with path.open("rb") as f:
        msg = BytesHeaderParser().parse(f)
    senders = getaddresses([str(msg.get("From", ""))])
    return (senders[0][1] if senders else ""), "support@helpdesk.example.com"


def summary(name: str, walls: list[float], cpus: list[float], rss: list[float]) -> str:
    return (f"{name:<44} {statistics.mean(walls) * 1000:8.0f} {statistics.median(walls) * 1000:8.0f} "
            f"{statistics.mean(cpus) * 1000:8.0f} {max(rss):8.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--ingest", action="store_true", help="measure the synchronous `ingest -q` instead of deliver")
    args = ap.parse_args()

    corpus = OUT / f"corpus-{args.n}-{args.seed}"
    if not (corpus / "eml").is_dir():
        print(f"generating {args.n} mails into {corpus} ...", flush=True)
        subprocess.run([sys.executable, str(GEN), str(corpus), "-n", str(args.n), "--seed", str(args.seed)],
                       check=True, capture_output=True)
    files = sorted((corpus / "eml").iterdir())[: args.n]
    venv = roundup_venv()
    work = Path(tempfile.mkdtemp(prefix="tg-bench-pipe-"))
    tracker = make_tracker(venv, work)

    cfg = work / "gateway.toml"
    cfg.write_text(f'[gateway]\ndata_dir = "{work / "var"}"\naddresses = ["support@helpdesk.example.com"]\n'
                   'unknown_senders = "register"\n')
    env = dict(os.environ, TICKET_GATEWAY_CONFIG=str(cfg))
    gw = Path(sys.executable).with_name("ticket-gateway")
    gw_cmd = [str(gw)] if gw.exists() else [sys.executable, "-m", "gateway"]
    subprocess.run(gw_cmd + ["db", "upgrade"], env=env, check=True, capture_output=True)
    # byte-compiled, as `pip install` leaves an installed gateway
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "gateway"), str(ROOT / "handlers")],
                   check=True, capture_output=True)
    mailgw = [str(venv / "bin" / "roundup-mailgw"), str(tracker)]

    # warm both (first-run byte compilation, page cache)
    for cmd, e in ((mailgw, None), (gw_cmd + ["--help"], env)):
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=e)

    bare = [run_measured([sys.executable, "-c", "pass"], None) for _ in range(20)]
    r_w: list[float] = []
    r_c: list[float] = []
    r_m: list[float] = []
    g_w: list[float] = []
    g_c: list[float] = []
    g_m: list[float] = []
    failures = 0
    for i, f in enumerate(files):
        sender, rcpt = envelope(f)
        gcmd = gw_cmd + ["ingest" if args.ingest else "deliver", "-q", "--sender", sender, "--recipient", rcpt]
        order = [("r", mailgw, None), ("g", gcmd, env)]
        if i % 2:
            order.reverse()
        for who, cmd, e in order:
            wall, cpu, rss, code = run_measured(cmd, f, e)
            failures += code != 0
            (r_w if who == "r" else g_w).append(wall)
            (r_c if who == "r" else g_c).append(cpu)
            (r_m if who == "r" else g_m).append(rss)

    t_last = time.perf_counter()
    stored = 0
    while True:  # the drainer may still be at work
        listing = subprocess.run(gw_cmd + ["mail", "list", "--json"], env=env, capture_output=True, text=True).stdout
        stored = len(json.loads(listing or "[]"))
        if stored >= len(files) or time.perf_counter() - t_last > 300:
            break
        time.sleep(0.2)
    drained_after = time.perf_counter() - t_last
    issues = subprocess.run([str(venv / "bin" / "roundup-admin"), "-i", str(tracker), "list", "issue"],
                            capture_output=True, text=True).stdout.count("\n")
    outcomes: dict[str, int] = {}
    for m in json.loads(listing or "[]"):
        outcomes[m["outcome"]] = outcomes.get(m["outcome"], 0) + 1
    print()
    print(f"{len(files)} mails, interleaved; per mail:")
    print(f"{'':<44} {'mean ms':>8} {'median':>8} {'CPU ms':>8} {'RSS MiB':>8}")
    print(summary("python -c pass (floor, same run)", [b[0] for b in bare], [b[1] for b in bare],
                  [b[2] for b in bare]))
    print(summary("roundup-mailgw (Roundup, classic, SQLite)", r_w, r_c, r_m))
    print(summary(f"ticket-gateway {'ingest' if args.ingest else 'deliver'} (pipe mode, SQLite)", g_w, g_c, g_m))
    print(f"ratio roundup/gateway, mean wall: {statistics.mean(r_w) / statistics.mean(g_w):.2f}; "
          f"median wall: {statistics.median(r_w) / statistics.median(g_w):.2f}; "
          f"CPU: {statistics.mean(r_c) / statistics.mean(g_c):.2f}  (issue 14 target: >= 4)")
    print(f"every mail stored {drained_after:.1f} s after the last process exited ({stored} stored)")
    print(f"Roundup issues: {issues}; gateway mails by outcome: {outcomes}; processes that failed: {failures}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

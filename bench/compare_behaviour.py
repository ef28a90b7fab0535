#!/usr/bin/env python3
"""Behaviour of two commits side by side (not a test): every table of the gateway's store, BASE vs HEAD.

    nice -n 10 .venv/bin/python bench/compare_behaviour.py BASE HEAD [-n 5000] [--seed 42]
        [--parts corpus,corpus-seq,corpus-notify,bench,serve] [--sample 5]
        [--bench-rounds 2 [--bench-ingest '-n 5000 --pipe 20'] [--bench-smtp '-n 1000 --clients 1 --no-rss']]

For each commit (any git revision of this repository):
  1. its tree (`git archive`) in bench/out/compare/src-<sha> and a scratch virtualenv beside it
     (venv-<sha>, `pip install -e`), both kept and reused;
  2. each part runs on a fresh SQLite store (a data directory of its own, the same reply secret for both commits):
     corpus      `ingest` of every mail of ../shared/corpus (a flat folder, in a fixed order, plus a copy of the
                 first mail: a duplicate), with the parse-ahead worker;
     corpus-seq  the same with `--no-parse-ahead`;
     corpus-notify  the same with `--notify` (notifications written to the outbox as for live mail; a commit
                 without that option notified on every import);
     bench       `ingest` of the seeded benchmark corpus (../shared/bench/gen_corpus.py, -n mails, --seed);
     serve       a real `serve` on a free port, every shared-corpus mail sent to it over SMTP by one client in
                 the same order, then waited for until every stored mail is threaded and the outbox delivered
                 (serve's own road: stored first, threaded by serve's workers);
     serve-bench the same with the benchmark corpus (long: not in the default parts);
  3. every table is dumped, ordered by its primary key (the order mails were processed in counts), with what
     is random or a clock reading masked: date/time columns and *_at, ISO and RFC 5322 dates inside text,
     uuids (`tg.<hex>.` Message-IDs), MIME boundaries, make_msgid ids, Thread-Index values, the SMTP client's
     port, the outbox's random batch and claim tokens, the run's own directory; raw mail (inbound_raw) is
     compared by the SHA-256 of its masked bytes.
     Attachment blob files (by name) and the SMTP replies (serve) are compared as two more "tables".
Then BASE vs HEAD, per part and table: identical, or different with the row counts, the columns that differ,
and a sample of rows; a table whose rows are equal in another order says so. A column only one side has is
named (a schema change) and the rows are compared on the shared columns.

Exit status 0 when every table of every part is identical, 1 otherwise. Dumps and a summary.json stay in
bench/out/compare/<base>-<head>/ for a closer look.
--bench-rounds K: then this checkout's bench/bench_ingest.py and bench/bench_smtp.py, copied into each commit's tree
and run with its virtualenv, K times BASE then HEAD (interleaved, so both see the same load), each run with its
own same-run baseline; the load average before and after each run is printed beside its ratio lines.

A run of a commit against itself (BASE = HEAD) shows what the masks leave: it must print identical everywhere.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
CMP = OUT / "compare"
SHARED = Path(os.environ.get("TG_SHARED", ROOT.parent / "shared"))
ADDRESS = "support@example.com"
SECRET = "compare-behaviour-fixed-reply-secret-0123456789"  # the same signed reply addresses on both sides
SKIP_NAMES = ("LICENSE", "README", "COPYING")
PARTS = ("corpus", "corpus-seq", "corpus-notify", "bench", "serve", "serve-bench")
DEFAULT_PARTS = "corpus,corpus-seq,corpus-notify,bench,serve"

# columns random by design: (table, column)
RANDOM_COLUMNS = {
    "outbox": {"batch", "claim_token"},
    "api_tokens": {"secret_sha256", "prefix"},
    "leases": {"holder", "generation"},
}
TIME_COLUMNS = {"deadline", "expires_at", "acquired_at", "renewed_at"}
MASKS = [
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?"), "<time>"),
    (
        re.compile(
            r"(?:(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), )?\d{1,2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
            r" \d{4} \d\d:\d\d(?::\d\d)? (?:[+-]\d{4}|GMT|UTC)(?: \([A-Z]+\))?"
        ),
        "<date>",
    ),
    (re.compile(r"tg\.[0-9a-f]{32}\."), "tg.<uuid>."),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"={15}\d{6,20}=="), "<boundary>"),
    (re.compile(r"<\d{15,}\.\d+\.\d+@"), "<<msgid>@"),  # email.utils.make_msgid: time, pid, random
    (re.compile(r"(?mi)^(Thread-Index:)[ \t]*\S+"), r"\1 <time-derived>"),  # Outlook's: a FILETIME and deltas
    (re.compile(r"\b(127\.0\.0\.1|::1|localhost):\d+"), r"\1:<port>"),  # the SMTP client's port
]


# Commits ---------------------------------------------------------------------------------------------------
def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def prepare(rev: str) -> tuple[str, Path, Path]:
    """(sha, source tree, the virtualenv's bin directory) of a revision, made once and reused."""
    sha = git("rev-parse", "--verify", rev + "^{commit}")
    src, venv = CMP / f"src-{sha[:12]}", CMP / f"venv-{sha[:12]}"
    if not (src / ".complete").exists():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", sha], check=True, capture_output=True
        ).stdout
        tar = CMP / f"src-{sha[:12]}.tar"
        tar.write_bytes(archive)
        with tarfile.open(tar) as t:
            t.extractall(src, filter="data")
        tar.unlink()
        (src / ".complete").write_text(sha)
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        print(f"  virtualenv for {sha[:12]} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-e", str(src)], check=True, capture_output=True)
        (venv / ".complete").write_text(sha)
    return sha, src, venv / "bin"


# Corpora ---------------------------------------------------------------------------------------------------
def shared_corpus() -> Path:
    """Every file of ../shared/corpus that is a mail, as one flat folder in a fixed order, plus a copy of the first
    one (a duplicate by bytes)."""
    dst = CMP / "corpus-shared"
    if (dst / ".complete").exists():
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    root = SHARED / "corpus"
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith(SKIP_NAMES) and p.suffix not in (".json", ".md")
    )
    for i, f in enumerate(files):
        shutil.copyfile(f, dst / f"{i:04d}-{f.name}")
    shutil.copyfile(files[0], dst / f"{len(files):04d}-dup-{files[0].name}")
    (dst / ".complete").write_text(str(len(files) + 1))
    return dst


def mail_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def bench_corpus(n: int, seed: int) -> Path:
    out = OUT / f"corpus-{n}-{seed}"  # where bench_ingest.py writes the same corpus
    if not (out / "manifest.tsv").exists():
        print(f"generating {n} mails (seed {seed}) into {out} ...", flush=True)
        subprocess.run(
            [sys.executable, str(SHARED / "bench" / "gen_corpus.py"), str(out), "-n", str(n), "--seed", str(seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out / "eml"


# Runs ------------------------------------------------------------------------------------------------------
def config(work: Path, src: Path, extra: str = "") -> Path:
    var = work / "var"
    var.mkdir(parents=True)
    (var / "reply-secret").write_text(SECRET + "\n")
    text = (
        f'''[gateway]
data_dir = "{var}"
addresses = ["{ADDRESS}"]
unknown_senders = "register"

[database]
url = "sqlite:///{var / "gateway.db"}"

[logging]
level = "WARNING"
'''
        + extra
    )
    if "[http]" in (src / "config.example.toml").read_text() and "[http]" not in extra:
        text += '\n[http]\nlisten = "127.0.0.1:0"\n'
    cfg = work / "gateway.toml"
    cfg.write_text(text)
    return cfg


def gw(bin_dir: Path, cfg: Path, *args: str, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("TICKET_GATEWAY_CONFIG", None)
    return subprocess.run(
        [str(bin_dir / "ticket-gateway"), "--config", str(cfg), *args],
        cwd=cfg.parent,
        env=env,
        capture_output=True,
        **kw,
    )


def run_ingest(bin_dir: Path, src: Path, work: Path, folder: Path, *extra: str) -> dict[str, Any]:
    cfg = config(work, src)
    gw(bin_dir, cfg, "db", "upgrade", check=True)
    t = time.monotonic()
    p = gw(bin_dir, cfg, "ingest", "--json", *extra, str(folder))
    lines = p.stdout.decode(errors="replace").splitlines()
    return {
        "seconds": time.monotonic() - t,
        "exit": p.returncode,
        "mails": len(lines),
        "outcomes": dict(Counter(json.loads(x).get("outcome") for x in lines if x.startswith("{"))),
        "stderr_tail": p.stderr.decode(errors="replace")[-600:] if p.returncode else "",
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sender(raw: bytes) -> str:
    head = raw[:16384].decode("latin-1")
    m = re.search(r"^From:(.*(?:\r?\n[ \t].*)*)", head, re.M | re.I)
    addr = email.utils.parseaddr(re.sub(r"\r?\n", " ", m.group(1))) if m else ("", "")
    ok = "@" in addr[1] and addr[1].isascii() and addr[1].isprintable() and " " not in addr[1]
    return addr[1] if ok else "unknown@example.net"


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _connect(port: int) -> smtplib.SMTP:
    s = smtplib.SMTP("127.0.0.1", port, timeout=300)
    s.ehlo("compare.example")
    return s


def _send(s: smtplib.SMTP, raw: bytes) -> str:
    try:
        s.sendmail(_sender(raw), [ADDRESS], _crlf(raw))
        return "250"
    except smtplib.SMTPRecipientsRefused as e:
        return " ".join(str(c) for c, _ in e.recipients.values())
    except smtplib.SMTPResponseException as e:
        return str(e.smtp_code)


def _scalar(db: Path, sql: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute(sql).fetchone()[0] or 0)
    finally:
        con.close()


def run_serve(bin_dir: Path, src: Path, work: Path, folder: Path) -> dict[str, Any]:
    """Every mail of the folder over SMTP (one client, in order) to a real `serve`; waits until every stored mail
    is threaded and nothing is queued in the outbox, then stops it with SIGTERM."""
    port = free_port()
    cfg = config(
        work,
        src,
        f'\n[[listen]]\nprotocol = "smtp"\nhost = "127.0.0.1"\nport = {port}\n\n[serve]\nhostname = "compare"\n',
    )
    gw(bin_dir, cfg, "db", "upgrade", check=True)
    env = dict(os.environ)
    env.pop("TICKET_GATEWAY_CONFIG", None)
    err = (work / "serve.stderr").open("wb")
    proc = subprocess.Popen(
        [str(bin_dir / "ticket-gateway"), "--config", str(cfg), "serve"],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    replies: list[str] = []
    db = work / "var" / "gateway.db"
    t = time.monotonic()
    try:
        end = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as c:
                    if c.recv(200).startswith(b"220"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"serve did not start ({proc.poll()}): see {work / 'serve.stderr'}")
            time.sleep(0.1)
        s = _connect(port)
        for f in mail_files(folder):
            try:
                replies.append(_send(s, f.read_bytes()))
            except (OSError, smtplib.SMTPException):  # the server dropped the connection: a new one, once
                replies.append("dropped")
                s = _connect(port)
        s.quit()
        sent = time.monotonic() - t
        end = time.monotonic() + 3600
        pending = (
            "SELECT (SELECT count(*) FROM inbound_mail WHERE outcome = 'received')"
            " + (SELECT count(*) FROM outbox WHERE status = 'queued')"
        )
        while _scalar(db, pending):
            if proc.poll() is not None or time.monotonic() > end:
                raise SystemExit(f"serve did not thread everything ({proc.poll()}): see {work / 'serve.stderr'}")
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
        err.close()
    return {
        "seconds": time.monotonic() - t,
        "sent_seconds": sent,
        "exit": proc.returncode,
        "mails": len(replies),
        "smtp": dict(Counter(replies)),
        "_replies": replies,
    }


# Dumps -----------------------------------------------------------------------------------------------------
def mask_text(s: str, work: str) -> str:
    s = s.replace(work, "<work>")
    for rx, repl in MASKS:
        s = rx.sub(repl, s)
    return s


def masked(table: str, col: str, decl: str, v: Any, work: str) -> Any:
    if v is None:
        return None
    if col in RANDOM_COLUMNS.get(table, ()):
        return "<random>"
    if col in TIME_COLUMNS or col.endswith("_at") or re.search(r"DATE|TIME", decl, re.I):
        return "<time>"
    if isinstance(v, bytes):
        text = mask_text(v.decode("latin-1"), work)
        if table == "inbound_raw" or len(text) > 65536:
            return f"<{len(text)} bytes sha256 {hashlib.sha256(text.encode('latin-1')).hexdigest()}>"
        return text
    if isinstance(v, str):
        return mask_text(v, work)
    return v


def dump(work: Path, extra: dict[str, list[list[Any]]]) -> dict[str, dict[str, Any]]:
    """{table: {"columns": [...], "rows": [[...], ...]}} of the store under work/var, masked, ordered by primary key."""
    con = sqlite3.connect(f"file:{work / 'var' / 'gateway.db'}?mode=ro", uri=True)
    out: dict[str, dict[str, Any]] = {}
    try:
        names = [
            r[0]
            for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        for name in names:
            info = con.execute(f'PRAGMA table_info("{name}")').fetchall()  # cid, name, type, notnull, default, pk
            cols = [(r[1], r[2] or "") for r in info]
            pk = [r[1] for r in sorted(info, key=lambda r: r[5]) if r[5]]
            order = ", ".join(f'"{c}"' for c in pk) if pk else "rowid"
            rows = [
                [masked(name, c, d, v, str(work)) for (c, d), v in zip(cols, r, strict=True)]
                for r in con.execute(f'SELECT * FROM "{name}" ORDER BY {order}')
            ]
            out[name] = {"columns": [c for c, _ in cols], "rows": rows}
    finally:
        con.close()
    blobs = sorted([p.name] for p in (work / "var").rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f]{64}", p.name))
    out["(attachment blob files)"] = {"columns": ["sha256"], "rows": blobs}
    for name, rows in extra.items():
        out[name] = {"columns": ["n", "value"], "rows": rows}
    return out


# Diff ------------------------------------------------------------------------------------------------------
def _short(v: Any, width: int = 160) -> str:
    s = json.dumps(v, default=str, ensure_ascii=False)
    return s if len(s) <= width else s[: width - 20] + f"...({len(s)} chars)"


def _pair(x: Any, y: Any) -> dict[str, str]:
    """Two differing values, long strings shown from a little before their first difference."""
    if isinstance(x, str) and isinstance(y, str) and max(len(x), len(y)) > 160:
        k = next((i for i, (p, q) in enumerate(zip(x, y, strict=False)) if p != q), min(len(x), len(y)))
        lo = max(0, k - 60)
        return {"at": str(k), "BASE": _short(x[lo : lo + 200], 300), "HEAD": _short(y[lo : lo + 200], 300)}
    return {"BASE": _short(x), "HEAD": _short(y)}


def diff_table(a: dict[str, Any] | None, b: dict[str, Any] | None, sample: int) -> dict[str, Any]:
    if a is None or b is None:
        return {
            "identical": False,
            "note": "only in " + ("HEAD" if a is None else "BASE"),
            "rows": [len((a or b or {}).get("rows", []))],
        }
    common = [c for c in a["columns"] if c in b["columns"]]
    res: dict[str, Any] = {"rows": [len(a["rows"]), len(b["rows"])]}
    only_a = [c for c in a["columns"] if c not in common]
    only_b = [c for c in b["columns"] if c not in common]
    if only_a or only_b:
        res["columns_only_in"] = {"BASE": only_a, "HEAD": only_b}
    ia, ib = [a["columns"].index(c) for c in common], [b["columns"].index(c) for c in common]
    ra = [[r[i] for i in ia] for r in a["rows"]]
    rb = [[r[i] for i in ib] for r in b["rows"]]
    res["identical"] = ra == rb and not only_a and not only_b
    if ra == rb:
        return res
    key = lambda r: json.dumps(r, default=str, sort_keys=True)  # noqa: E731
    if sorted(map(key, ra)) == sorted(map(key, rb)):
        res["note"] = "the same rows in another order"
    if len(ra) == len(rb):
        bad = [k for k in range(len(ra)) if ra[k] != rb[k]]
        res["rows_differing"] = len(bad)
        res["columns_differing"] = dict(
            Counter(c for k in bad for c, x, y in zip(common, ra[k], rb[k], strict=True) if x != y)
        )
        res["sample"] = [
            {
                "row": k,
                **{c: _pair(x, y) for c, x, y in zip(common, ra[k], rb[k], strict=True) if x != y},
            }
            for k in bad[:sample]
        ]
    else:
        ca, cb = Counter(map(key, ra)), Counter(map(key, rb))
        res["only_in_BASE"] = sum((ca - cb).values())
        res["only_in_HEAD"] = sum((cb - ca).values())
        res["sample"] = [{"BASE only": _short(json.loads(k), 400)} for k in list(ca - cb)[:sample]] + [
            {"HEAD only": _short(json.loads(k), 400)} for k in list(cb - ca)[:sample]
        ]
    return res


Side = tuple[str, Path, Path]  # sha, source tree, the virtualenv's bin directory


def run_part(part: str, side: Side, work: Path, folder: Path) -> tuple[dict[str, Any], dict[str, list[list[Any]]]]:
    """One part on one commit: its figures and the extra "tables" (the SMTP replies)."""
    _, src, bin_dir = side
    if part.startswith("serve"):
        st = run_serve(bin_dir, src, work, folder)
        return st, {"(SMTP replies)": [[k, r] for k, r in enumerate(st.pop("_replies"))]}
    extra: list[str] = []
    if part == "corpus-seq":
        extra = ["--no-parse-ahead"]
    elif part == "corpus-notify" and "--notify" in (src / "gateway" / "cli" / "ingest.py").read_text():
        extra = ["--notify"]  # before that option every import sent its notifications
    return run_ingest(bin_dir, src, work, folder, *extra), {}


def print_result(result: dict[str, dict[str, Any]]) -> bool:
    """Prints a part's per-table verdicts; True when every table is identical."""
    same = [t for t, r in result.items() if r["identical"]]
    print(f"  {len(same)} of {len(result)} tables identical", flush=True)
    keys = ("note", "columns_only_in", "rows_differing", "columns_differing", "only_in_BASE", "only_in_HEAD")
    for t, r in result.items():
        counts = "/".join(str(x) for x in r["rows"])
        if r["identical"]:
            print(f"    identical  {t} ({counts} rows)")
            continue
        print(f"    DIFFERENT  {t} (rows BASE/HEAD {counts})" + "".join(f"; {k}: {r[k]}" for k in keys if k in r))
        for s in r.get("sample", []):
            print(f"        {_short(s, 1200)}")
    return len(same) == len(result)


def remask(d: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    for t in d.values():
        t["rows"] = [[mask_text(v, "<work>") if isinstance(v, str) else v for v in r] for r in t["rows"]]
    return d


def compare(
    parts: list[str], sides: list[Side], runs: Path, folders: dict[str, Path], sample: int, rediff: bool = False
) -> bool:
    summary: dict[str, Any] = {"base": sides[0][0], "head": sides[1][0], "parts": {}}
    all_same = True
    for part in parts:
        folder = folders[part]
        print(f"\n== {part}: {len(mail_files(folder))} mails of {folder}", flush=True)
        dumps, stats = [], []
        for label, side in zip(("BASE", "HEAD"), sides, strict=True):
            work = runs / part / label
            if rediff:  # the dumps of an earlier run, with today's masks applied again
                d = remask(json.loads((work / "dump.json").read_text()))
                st = {"rediff": str(work / "dump.json")}
            else:
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir(parents=True)
                st, extra = run_part(part, side, work, folder)
                print(f"  {label} {side[0][:12]}: {json.dumps(st)}  (load {os.getloadavg()[0]:.1f})", flush=True)
                d = dump(work, extra)
                (work / "dump.json").write_text(json.dumps(d, default=str, ensure_ascii=False))
            dumps.append(d)
            stats.append(st)
        tables = sorted(set(dumps[0]) | set(dumps[1]))
        result = {t: diff_table(dumps[0].get(t), dumps[1].get(t), sample) for t in tables}
        all_same = print_result(result) and all_same
        summary["parts"][part] = {
            "mails": len(mail_files(folder)),
            "stats": stats,
            "result": result,
            "identical": sum(r["identical"] for r in result.values()),
            "tables": len(tables),
        }
        (runs / "summary.json").write_text(json.dumps(summary, indent=1, default=str, ensure_ascii=False))
    print(f"\n{'IDENTICAL' if all_same else 'DIFFERENCES FOUND'}; summary: {runs / 'summary.json'}")
    return all_same


# Benchmarks ------------------------------------------------------------------------------------------------
BENCH_LINES = re.compile(r"corpus:|stdlib|ticket-gateway ingest|ratio|pipe mode|bare stdlib|client\(s\)\]|steady")


def bench_rounds(sides: list[Side], rounds: int, ingest_args: list[str], smtp_args: list[str], runs: Path) -> None:
    """bench_ingest.py and bench_smtp.py of this checkout, run against each commit's code in turn (BASE HEAD BASE
    HEAD ...): the same measuring code on both sides, each run with its own same-run baseline."""
    (CMP / "shared").unlink(missing_ok=True)
    (CMP / "shared").symlink_to(SHARED)  # ROOT.parent / "shared" of every src-<sha>
    neutral = CMP / "bench-cwd"  # not a source tree: `python -m gateway` imports the commit's installed package
    neutral.mkdir(exist_ok=True)
    for _, src, _ in sides:
        (src / "bench" / "out").mkdir(parents=True, exist_ok=True)
        for name in ("bench_ingest.py", "bench_smtp.py"):
            shutil.copyfile(HERE / name, src / "bench" / f"same_{name}")
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    for r in range(1, rounds + 1):
        for label, (sha, src, bin_dir) in zip(("BASE", "HEAD"), sides, strict=True):
            for name, args in (("bench_ingest.py", ingest_args), ("bench_smtp.py", smtp_args)):
                log = runs / f"bench-{r}-{label}-{name}.log"
                load = open("/proc/loadavg").read().split()[:3]
                t = time.monotonic()
                with log.open("wb") as f:
                    p = subprocess.run(
                        [str(bin_dir / "python"), str(src / "bench" / f"same_{name}"), *args],
                        cwd=neutral,
                        env=env,
                        stdout=f,
                        stderr=subprocess.STDOUT,
                    )
                after = open("/proc/loadavg").read().split()[:3]
                print(
                    f"\n[round {r}] {label} {sha[:12]} {name} {' '.join(args)}: exit {p.returncode}, "
                    f"{time.monotonic() - t:.0f} s, load before {' '.join(load)}, after {' '.join(after)}; {log}"
                )
                for line in log.read_text(errors="replace").splitlines():
                    if BENCH_LINES.search(line):
                        print(f"    {line.strip()}", flush=True)


def bench_corpora(sides: list[Side], ingest_args: list[str], smtp_args: list[str]) -> None:
    """The corpora the benchmark scripts would generate under each src-<sha>/bench/out: generated once, linked."""

    def n_of(args: list[str], default: int) -> int:
        return int(args[args.index("-n") + 1]) if "-n" in args else default

    ni, ns = n_of(ingest_args, 5000), n_of(smtp_args, 5000)
    seed = int(ingest_args[ingest_args.index("--seed") + 1]) if "--seed" in ingest_args else 42
    links = {f"corpus-{ni}-{seed}": bench_corpus(ni, seed).parent, f"corpus-{ns}": bench_corpus(ns, 42).parent}
    for _, src, _ in sides:
        for name, target in links.items():
            link = src / "bench" / "out" / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("base")
    ap.add_argument("head")
    ap.add_argument("-n", type=int, default=5000, help="benchmark corpus size (default 5000)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument(
        "--parts",
        default=DEFAULT_PARTS,
        help=f"comma-separated, of {', '.join(PARTS)} (default {DEFAULT_PARTS}); '' for none",
    )
    ap.add_argument("--sample", type=int, default=5, help="differing rows shown per table (default 5)")
    ap.add_argument("--rediff", action="store_true", help="no runs: diff the dumps of the last run again")
    ap.add_argument(
        "--bench-rounds",
        type=int,
        default=0,
        metavar="K",
        help="then K rounds of BASE HEAD of bench_ingest.py and bench_smtp.py (default 0)",
    )
    ap.add_argument(
        "--bench-ingest",
        default="-n 5000 --pipe 20",
        metavar="ARGS",
        help="bench_ingest.py's arguments (default: '-n 5000 --pipe 20')",
    )
    ap.add_argument(
        "--bench-smtp",
        default="-n 1000 --clients 1 --no-rss",
        metavar="ARGS",
        help="bench_smtp.py's arguments (default: '-n 1000 --clients 1 --no-rss')",
    )
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := [p for p in parts if p not in PARTS]:
        ap.error(f"unknown parts: {unknown}")
    CMP.mkdir(parents=True, exist_ok=True)
    sides = [prepare(args.base), prepare(args.head)]
    print(f"BASE {args.base} = {sides[0][0][:12]}   HEAD {args.head} = {sides[1][0][:12]}", flush=True)
    runs = CMP / f"{sides[0][0][:12]}-{sides[1][0][:12]}"
    runs.mkdir(exist_ok=True)
    folders: dict[str, Path] = {}
    if parts:
        folders = {p: shared_corpus() for p in ("corpus", "corpus-seq", "corpus-notify", "serve")}
    if {"bench", "serve-bench"} & set(parts):
        folders["bench"] = folders["serve-bench"] = bench_corpus(args.n, args.seed)
    same = compare(parts, sides, runs, folders, args.sample, args.rediff) if parts else True
    if args.bench_rounds:
        ingest_args, smtp_args = args.bench_ingest.split(), args.bench_smtp.split()
        bench_corpora(sides, ingest_args, smtp_args)
        bench_rounds(sides, args.bench_rounds, ingest_args, smtp_args, runs)
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()

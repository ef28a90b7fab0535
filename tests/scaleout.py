"""Several `ticket-gateway serve` processes on one PostgreSQL database, as on several hosts (issue 14.5), for
tests/integration/test_scaleout.py and bench/bench_scaleout.py.

Each instance has what a host of its own would have: its own data directory (spool, local Maildir, the
preparation worker), its own SMTP port (a free loopback port) and HTTP on 127.0.0.1:0. What instances must
share is shared as in production: the database URL, the attachment store (`[attachments] path`, a shared
file system between hosts), the reply secret (`outbound.reply_secret`: a reply address signed by one instance
is verified by another) and the names of the `[[imap]]` accounts (one lease per account in the database).
"""

from __future__ import annotations

import json
import os
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REPLY_SECRET = "scale-out-shared-reply-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def toml(sections: dict[str, Any]) -> str:
    """A config file from {section: {key: value}} and {array: [{...}, ...]} (arrays of tables)."""
    out: list[str] = []
    for name, body in sections.items():
        for table in body if isinstance(body, list) else [body]:
            out.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            out.extend(f"{k} = {toml_value(v)}" for k, v in table.items())
            out.append("")
    return "\n".join(out)


def instance_sections(root: Path, index: int, db_url: str, *, smtp_port: int, relay_port: int | None,
                      addresses: Sequence[str], shared: Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config of instance `index`: own data directory and ports; shared database, attachments, secret."""
    sections: dict[str, Any] = {
        "gateway": {"data_dir": str(root / f"i{index}" / "var"), "addresses": list(addresses),
                    "unknown_senders": "register"},
        "database": {"url": db_url},
        "attachments": {"path": str(shared / "attachments")},
        "listen": [{"protocol": "smtp", "host": "127.0.0.1", "port": smtp_port}],
        "serve": {"hostname": f"gw{index}.test", "pending_sweep_seconds": 2},
        "http": {"listen": "127.0.0.1:0"},
        "logging": {"level": "INFO"},
        "outbound": {"reply_secret": REPLY_SECRET, "from_address": addresses[0], "deliver_seconds": 1},
    }
    if relay_port is not None:
        sections["outbound"].update(relay_host="127.0.0.1", relay_port=relay_port, relay_security="none")
    for name, body in (extra or {}).items():
        if isinstance(body, dict) and isinstance(sections.get(name), dict):
            sections[name] = {**sections[name], **body}
        else:
            sections[name] = body
    return sections


class Instance:
    """One `serve` subprocess."""

    def __init__(self, root: Path, index: int, sections: dict[str, Any], smtp_port: int) -> None:
        self.index = index
        self.smtp_port = smtp_port
        self.dir = root / f"i{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = self.dir / "gateway.toml"
        self.config.write_text(toml(sections))
        self.log = self.dir / "serve.stderr"
        env = dict(os.environ)
        env.pop("TICKET_GATEWAY_CONFIG", None)
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"serve {self.index} exited with {self.proc.returncode}: {self.text()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=2) as s:
                return s.recv(200).startswith(b"220")
        except OSError:
            return False

    def http_url(self) -> str:
        m = re.search(r"http: listening on (http://127\.0\.0\.1:\d+)", self.text())
        if not m:
            raise AssertionError(f"serve {self.index}: no HTTP listener in the log: {self.text()[-2000:]}")
        return m.group(1)

    def healthz(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(self.http_url() + "/healthz", timeout=10).json())

    def stop(self, timeout: float = 40) -> int | None:
        """SIGTERM (a graceful stop: sessions finish, the IMAP lease is released); SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


class Cluster:
    """`n` serve instances on one database, started together; `stop()` ends them all."""

    def __init__(self, root: Path, n: int, db_url: str, *, relay_port: int | None = None,
                 addresses: Sequence[str] = ("support@example.com",), extra: dict[str, Any] | None = None,
                 start_timeout: float = 90) -> None:
        self.root = root
        self.db_url = db_url
        shared = root / "shared"
        (shared / "attachments").mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(n)]
        self.instances: list[Instance] = []
        try:
            for i, port in enumerate(ports):
                sections = instance_sections(root, i, db_url, smtp_port=port, relay_port=relay_port,
                                             addresses=addresses, shared=shared, extra=extra)
                self.instances.append(Instance(root, i, sections, port))
            deadline = time.monotonic() + start_timeout
            waiting = list(self.instances)
            while waiting:
                waiting = [x for x in waiting if not x.ready()]
                if waiting and time.monotonic() > deadline:
                    raise RuntimeError(f"serve {[x.index for x in waiting]} did not start within {start_timeout} s")
                if waiting:
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    @property
    def ports(self) -> list[int]:
        return [x.smtp_port for x in self.instances]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- serve {x.index}\n{x.text()[-tail:]}" for x in self.instances)

    def stop(self) -> list[int | None]:
        for x in self.instances:
            if x.proc.poll() is None:
                x.proc.send_signal(signal.SIGTERM)
        return [x.stop() for x in self.instances]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def send_many(port: int, mails: Iterable[tuple[str, Sequence[str], bytes]], *, tries: int = 20) -> int:
    """Mails (envelope sender, recipients, bytes) over one SMTP connection to 127.0.0.1:port, each until its
    250 (a 4xx, a dropped connection: again, at most `tries` times). Returns how many were accepted."""
    conn: smtplib.SMTP | None = None
    ok = 0
    try:
        for sender, rcpts, raw in mails:
            data = crlf(raw)
            for attempt in range(tries):
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", port, timeout=60)
                        conn.ehlo("client.example")
                    conn.sendmail(sender, list(rcpts), data)
                    ok += 1
                    break
                except smtplib.SMTPResponseException as e:
                    if e.smtp_code >= 500 or attempt == tries - 1:
                        raise
                    time.sleep(0.1)
                except (OSError, smtplib.SMTPException):
                    if attempt == tries - 1:
                        raise
                    conn = None
                    time.sleep(0.1)
    finally:
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()
    return ok


def pg_database(admin_url: str, name: str) -> str:
    """A fresh, empty PostgreSQL database `name` (dropped first when it exists); its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database or "postgres", autocommit=True, connect_timeout=10) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    return u.set(database=name).render_as_string(hide_password=False)


def drop_pg_database(admin_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(admin_url)
    with psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                         dbname=u.database or "postgres", autocommit=True, connect_timeout=10) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

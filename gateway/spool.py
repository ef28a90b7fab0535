"""The delivery spool: where the MTA pipe (`ticket-gateway deliver`) leaves a mail, durably, and exits.

A pipe process per mail cannot afford to import the database layer (SQLAlchemy and the mappers alone take
about half a second); Postfix only needs to know that the mail is safe. So `deliver` writes the raw mail and its
envelope to one file in `<data_dir>/spool` (temporary name, fsync, rename, fsync of the directory: durable
before exit 0) and leaves the rest to a drainer, which stores spooled mails through the intake engine in
batches and removes each file only after its mail was committed.

Exactly one drainer runs at a time, by an exclusive flock on `spool/.lock`: `serve` holds it for as long as it
runs; without a running service, the pipe process starts a detached `ticket-gateway spool drain` that takes
the lock, drains until the spool is empty, lets go, and looks once more (a mail spooled after its last look
finds the lock free and starts a drainer of its own). A pipe process rings a doorbell (a datagram to
`spool/.doorbell`, bound by `serve`) so that a running service drains at once instead of at its next poll.

This module imports only the standard library: it is what a pipe process runs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

MAGIC = b"TGSPOOL1 "
SUFFIX = ".mail"
LOCK = ".lock"
DOORBELL = ".doorbell"
# the envelope line is written by us; a spool file whose first line is longer was not
MAX_HEADER = 64 * 1024


class SpoolError(Exception):
    """The mail could not be spooled (disk full, permissions): the MTA must try again later."""


def spool_dir(data_dir: Path) -> Path:
    return data_dir / "spool"


def write(spool: Path, raw: bytes, envelope: dict[str, Any]) -> Path:
    """Write one mail durably; returns its path. Raises SpoolError when it could not be made durable."""
    head = MAGIC + json.dumps(envelope, separators=(",", ":"), ensure_ascii=True).encode("ascii") + b"\n"
    # time-ordered names: drained in the order they arrived
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = spool / f".{name}.tmp"
    final = spool / f"{name}{SUFFIX}"
    try:
        spool.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(head + raw)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, final)
        _fsync_dir(spool)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise SpoolError(f"cannot spool the mail in {spool}: {e.strerror or e}") from e
    return final


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: Path) -> tuple[bytes, dict[str, Any]]:
    """(raw mail, envelope) of a spool file. Raises ValueError for a file that is not one of ours."""
    data = path.read_bytes()
    end = data.find(b"\n", 0, MAX_HEADER)
    if not data.startswith(MAGIC) or end < 0:
        raise ValueError(f"{path.name}: not a spool file")
    envelope = json.loads(data[len(MAGIC):end])
    if not isinstance(envelope, dict):
        raise ValueError(f"{path.name}: bad envelope")
    return data[end + 1:], envelope


def pending(spool: Path, limit: int) -> list[Path]:
    """Up to `limit` spooled mails, oldest first."""
    try:
        names = sorted(n for n in os.listdir(spool) if n.endswith(SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return []
    return [spool / n for n in names[:limit]]


def remove(paths: list[Path]) -> None:
    """Forget drained files (their mails are committed). A crash before this drains them again: the intake's
    dedupe makes the second run a duplicate, nothing new."""
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass
    if paths:
        _fsync_dir(paths[0].parent)


class DrainLock:
    """The one-drainer lock (flock: released by the kernel when its holder dies)."""

    def __init__(self, spool: Path) -> None:
        self.path = spool / LOCK
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def held_elsewhere(self) -> bool:
        """True while another process drains (a running service, or a drainer)."""
        if self.acquire():
            self.release()
            return False
        return True


def ring(spool: Path) -> bool:
    """Tell a running service that mail is waiting; False when nobody listens (no harm: it polls too)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(b"1", str(spool / DOORBELL))
        return True
    except OSError:
        return False
    finally:
        s.close()


def spawn_detached(argv: list[str], env: dict[str, str] | None = None) -> None:
    """Start `argv` as a daemon (double fork, new session, no terminal, stdio on /dev/null): it outlives the
    pipe process and is not a child the MTA waits for."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)  # the intermediate child exits at once
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.execve(argv[0], argv, env if env is not None else dict(os.environ))
    except BaseException:  # noqa: BLE001 -- never return into the parent's code from a child
        os._exit(127)

"""`serve` drains the delivery spool (gateway.spool): mail piped by the MTA (`ticket-gateway deliver`) while the
service runs becomes a ticket as promptly as mail received by SMTP.

The service holds the spool's DrainLock for as long as it runs (a `deliver` then finds it held and only rings
the doorbell; no `spool drain` is started), binds the doorbell (a datagram socket, `spool/.doorbell`) and
drains when it rings and every `POLL_SECONDS` besides. Each spooled mail goes the way of an SMTP mail: sender
authentication, the group-committed store (`Service.store`), threading in batches; a file is removed only after
the commit holding its mail. When a `spool drain` holds the lock at start (it was draining before the service
came up), the service takes the lock at a later poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

from gateway import spool
from gateway.db import StoreUnavailable
from gateway.envelope import Envelope

log = logging.getLogger("gateway.spooldrain")

POLL_SECONDS = 5.0
BATCH = 200


def envelope_of(env: dict[str, Any]) -> Envelope:
    """The Envelope of a spool file's envelope line (as `deliver` wrote it)."""
    return Envelope(mail_from=env.get("mail_from"), rcpt_tos=tuple(str(a).lower() for a in env.get("rcpt_tos") or ()),
                    source="pipe", source_ref=None, client_ip=env.get("client_ip"),
                    client_helo=env.get("client_helo"))


def read_spooled(path: Path) -> tuple[bytes, Envelope]:
    try:
        raw, env = spool.read(path)
    except ValueError:  # not written by deliver: store what it holds, the pipeline decides
        raw, env = path.read_bytes(), {}
    return raw, envelope_of(env)


class SpoolDrainer:
    def __init__(self, service: Any, where: Path) -> None:
        self.service = service
        self.where = where
        self.lock = spool.DrainLock(where)
        self.sock: socket.socket | None = None
        self.rung = asyncio.Event()
        self.drained = 0

    def _take(self) -> bool:
        """The drain lock and the doorbell, once held; False while another drainer holds the lock."""
        if self.lock.fd is not None:
            return True
        if not self.lock.acquire():
            return False
        bell = self.where / spool.DOORBELL
        with contextlib.suppress(FileNotFoundError):
            bell.unlink()  # a stale socket of a service that died (we hold the lock: nobody else binds it)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(bell))
        os.chmod(bell, 0o666)  # pipe processes may run as another user than the service
        asyncio.get_running_loop().add_reader(sock.fileno(), self._ring)
        self.sock = sock
        return True

    def _ring(self) -> None:
        assert self.sock is not None
        with contextlib.suppress(OSError):
            while self.sock.recv(64):
                pass
        self.rung.set()

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
            self.sock.close()
            self.sock = None
            with contextlib.suppress(OSError):
                (self.where / spool.DOORBELL).unlink()
        self.lock.release()

    async def drain(self) -> int:
        """Store every mail spooled now (in batches); returns how many."""
        svc = self.service
        done = 0
        while not svc.stop_requested.is_set():
            files = await svc.run_sync(spool.pending, self.where, BATCH)
            if not files:
                break
            mails = await svc.run_sync(lambda fs=files: [read_spooled(f) for f in fs])
            if svc.app.auth is not None and svc.app.auth.active:
                mails = [(raw, await svc.authenticate(raw, env)) for raw, env in mails]
            await asyncio.gather(*(svc.store(raw, env) for raw, env in mails))  # group commit; raises on failure
            await svc.run_sync(spool.remove, files)
            done += len(files)
        self.drained += done
        return done

    async def run(self) -> None:
        svc = self.service
        stopping = svc.stopping
        try:
            while not stopping.is_set():
                try:
                    if self._take():
                        self.rung.clear()
                        n = await self.drain()
                        if n:
                            log.info("spool: stored %d piped mail(s)", n)
                except StoreUnavailable as e:
                    log.warning("spool: store unavailable, the mails stay spooled: %s", e)
                except Exception:  # noqa: BLE001 -- never exits: logs, tries again at the next poll
                    log.exception("spool: drain failed; tried again at the next poll")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake(stopping), POLL_SECONDS)
        finally:
            self.close()

    async def _wake(self, stopping: asyncio.Event) -> None:
        ring = asyncio.ensure_future(self.rung.wait())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({ring, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ring.cancel()
            stop.cancel()


def install_service(service: Any) -> None:
    """Component for gateway.service (COMPONENTS entry "gateway.spooldrain:install_service")."""
    drainer = SpoolDrainer(service, spool.spool_dir(service.config.data_dir))
    service.spool_drainer = drainer

    async def task(svc: Any) -> None:
        await drainer.run()

    service.add_task("spool", task)

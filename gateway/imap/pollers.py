"""Running the pollers: in threads, from asyncio, as a component of `serve`, once (the CLI); and `imap status`."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from gateway.engine import ThreadAhead
from gateway.imap.account import ImapAccount, PollResult, TlsSetupError, accounts
from gateway.imap.loop import ImapPoller
from gateway.imap.mailbox import close, connect_plain_or_tls
from gateway.imap.threads import ThreadBatch
from gateway.lease import Lease

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from gateway.host import ImapHost


def start_pollers(app: ImapHost, stop: threading.Event, *, names: Sequence[str] | None = None
                  ) -> list[threading.Thread]:
    """Start one daemon thread per `[[imap]]` account (or the named ones); they end when `stop` is set.
    Join them (with a timeout) after setting the event."""
    threads = []
    for account in accounts(app.config):
        if names is not None and account.name not in names:
            continue
        poller = ImapPoller(app, account)
        t = threading.Thread(target=poller.run, args=(stop,), name=f"imap-{account.name}", daemon=True)
        t.start()
        threads.append(t)
    return threads


async def run_pollers(app: ImapHost, stop: threading.Event, *, names: Sequence[str] | None = None) -> None:
    """asyncio: run every account's poller (or the named ones) in its own thread until `stop` is set; returns
    when all have ended (about a second after `stop` is set, plus a batch in hand). Uses a dedicated
    executor, so that pollers never occupy the loop's default executor (asyncio.to_thread)."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    pollers = [ImapPoller(app, a) for a in accounts(app.config) if names is None or a.name in names]
    if not pollers:
        return
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=len(pollers), thread_name_prefix="imap") as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, p.run, stop) for p in pollers))


def install_service(service: Any) -> None:
    """Component for gateway.service (COMPONENTS entry "gateway.imap:install_service"): one poller per
    `[[imap]]` account, each in a daemon thread of its own (IMAP and its IDLE block), as a task of the
    service. A poller ends within about a second of the service's `stop_requested` (plus a batch in hand);
    a daemon thread still stuck in a network call then cannot hold up the process's exit."""
    import asyncio

    thread = serve_threading(service)
    for account in accounts(service.config):
        poller = ImapPoller(service.app, account, thread=thread)

        async def task(svc: Any, poller: ImapPoller = poller) -> None:
            loop = asyncio.get_running_loop()
            ended = asyncio.Event()

            def target() -> None:
                try:
                    poller.run(svc.stop_requested)
                finally:
                    with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
                        loop.call_soon_threadsafe(ended.set)

            threading.Thread(target=target, name=f"imap-{poller.account.name}", daemon=True).start()
            await ended.wait()

        service.add_task(f"imap {account.name}", task)


def serve_threading(service: Any) -> ThreadBatch | None:
    """How `serve` threads stored mail, for its pollers: its own engine (shared with its SMTP workers and its
    sweep, so that a mail is threaded by one of them at a time; its preparation worker and CPU budget)
    holding its write gate (one SQLite writer at a time), as it threads SMTP mail; a ThreadAhead (the worker
    prepares the next batch while the poller writes this one). None: no engine yet."""
    engine = getattr(service, "engine", None)
    if engine is None:
        return None
    gate = getattr(service, "gate", None)
    hold: Callable[[], AbstractContextManager[Any]] | None = (
        (lambda: gate.hold(urgent=False)) if gate is not None else None)
    return ThreadAhead(engine, hold)


def account_status(app: ImapHost, account: ImapAccount, *, connect: bool = True) -> dict[str, Any]:
    """`imap status`: who polls the account (its lease: holder, seconds left, generation) and, with
    `connect`, whether this host can log in (TLS verified as the poller does it) and how many messages wait in
    the folder. Writes nothing (no folder is created, no lease taken)."""
    a = account
    state = Lease(app.sessions, f"imap:{a.name}", app.instance, a.lease_seconds).state()
    out: dict[str, Any] = {"account": a.name, "server": f"{a.user}@{a.host}:{a.effective_port} ({a.security})",
                           "lease": state.describe() if state else "never taken",
                           "holder": state.holder if state and not state.free else "",
                           "generation": state.generation if state else 0}
    if not connect:
        return out
    client: IMAPClient | None = None
    try:
        client = connect_plain_or_tls(a)
        client.login(a.user, a.secret())
        out["waiting"] = int(client.folder_status(a.folder, [b"MESSAGES"])[b"MESSAGES"])
        out["login"] = "ok"
    except TlsSetupError as e:
        out["login"], out["error"] = "tls", f"TLS: {e}"
    except Exception as e:  # noqa: BLE001 -- reported, not raised: the other accounts are checked too
        out["login"], out["error"] = "failed", f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            close(client)
    return out


def poll_accounts(app: ImapHost, names: Sequence[str] | None = None) -> list[PollResult]:
    """Drain every configured account once (the CLI and cron)."""
    out = []
    for account in accounts(app.config):
        if names is not None and account.name not in names:
            continue
        out.append(ImapPoller(app, account).poll_once())
    return out


__all__ = ["account_status", "install_service", "poll_accounts", "run_pollers", "start_pollers"]

"""The poller of one account: the service loop (drain, then IDLE or sleep; reconnect with backoff; the lease:
poll only while holding it, stand by otherwise; give up for good on a TLS set-up that cannot work) around a
mailbox (gateway.imap.mailbox), a ledger (gateway.imap.ledger) and a drain (gateway.imap.drain)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.db import is_unavailable
from gateway.engine import Engine, ThreadAhead
from gateway.imap.account import ImapAccount, PollResult, Prefixed, TlsSetupError
from gateway.imap.drain import BeforeMove, Drain
from gateway.imap.ledger import Ledger
from gateway.imap.mailbox import ClientFactory, Mailbox
from gateway.imap.threads import THREAD_BATCH, StoredThreads, ThreadBatch
from gateway.intake import Intake
from gateway.lease import Lease

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from gateway.host import ImapHost

log = logging.getLogger("gateway.imap")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0


class Backoff:
    """The service loop's pause after trouble: `first` seconds, doubling to `cap`; reset after a good turn."""

    def __init__(self, first: float, cap: float) -> None:
        self.first, self.cap, self.current = first, cap, first

    def next(self) -> float:
        """The pause to make now; the next one is twice as long (at most `cap`)."""
        now, self.current = self.current, min(self.current * 2, self.cap)
        return now

    def reset(self) -> None:
        self.current = self.first


class ImapPoller:
    """Drains one account's folder into the intake (gateway.imap).

    Options (keyword-only; the defaults are what the service and `imap poll` use):
    - client_factory(account) -> IMAPClient: connect with this instead (a client of one's own);
    - use_move: None uses UID MOVE where the server has it; False uses UID COPY + \\Deleted + UID EXPUNGE;
    - thread_after_move: None threads after the move where the server allows it (UIDPLUS); True/False force
      the fast (store, move, thread) or the slow (store, thread, move by outcome) order;
    - before_move(uids): called after a batch's commit and record, right before its move: a fault point
      (raising there is a crash between the commit and the move);
    - thread(mail_ids) -> results: how a batch of stored mails is threaded; default a `ThreadAhead` over an
      engine of its own (gateway.engine: prepared by the app's preparation worker, `app.ahead`, within
      limits.mail_cpu_seconds, then one write transaction, tries counted; the worker prepares the next batch
      while this one is written). `serve` passes one over its own engine, holding its write gate, as for SMTP
      mail; tests pass one that fails;
    - thread_batch: stored mails per call of `thread` (default 16, as serve threads SMTP mail)."""

    def __init__(self, app: ImapHost, account: ImapAccount | Mapping[str, Any], *,
                 client_factory: ClientFactory | None = None, use_move: bool | None = None,
                 thread_after_move: bool | None = None, before_move: BeforeMove | None = None,
                 thread: ThreadBatch | None = None, thread_batch: int = THREAD_BATCH) -> None:
        self.app = app
        self.account = account if isinstance(account, ImapAccount) else ImapAccount.from_config(
            account, app.config.base_dir)
        self.log = Prefixed(log, {"account": self.account.name})
        self.intake = Intake(app)
        self.mailbox = Mailbox(self.account, self.log, client_factory=client_factory, use_move=use_move)
        self.ledger = Ledger(app.sessions, app.clock, self.account, self.log)
        # one poller per mailbox across every instance on this database (gateway.lease)
        self.lease = Lease(app.sessions, f"imap:{self.account.name}", app.instance, self.account.lease_seconds)
        self.threads = StoredThreads(self.account, self.mailbox, self.ledger, self.log,
                                     thread or ThreadAhead(Engine(app, self.intake)), self._stopping,
                                     batch=thread_batch)
        self.drainer = Drain(app, self.account, self.mailbox, self.ledger, self.lease, self.intake, self.threads,
                             self.log, before_move=before_move, thread_after_move=thread_after_move)
        # what the service loop is doing: new | connecting | draining | waiting | idling | backoff | standby |
        # failed | stopped
        self.state = "new"
        self.error: str = ""  # set when the poller gave up for good (TlsSetupError)

    # The parts, as the tests and the CLI see them -------------------------------------------------------
    @property
    def client(self) -> IMAPClient | None:
        return self.mailbox.client

    @property
    def capabilities(self) -> frozenset[bytes]:
        return self.mailbox.capabilities

    @capabilities.setter
    def capabilities(self, value: frozenset[bytes]) -> None:
        self.mailbox.capabilities = value

    @property
    def idling(self) -> threading.Event:
        return self.mailbox.idling

    @property
    def idle_count(self) -> int:
        return self.mailbox.idle_count

    @property
    def decoupled(self) -> bool:
        return self.drainer.decoupled

    def connect(self) -> IMAPClient:
        return self.mailbox.connect()

    def disconnect(self) -> None:
        self.mailbox.disconnect()

    def _stopping(self) -> bool:
        return self.drainer.stopping()

    # One drain ------------------------------------------------------------------------------------------
    def poll_once(self) -> PollResult:
        """Connect (if not connected), drain the folder, and return the counts. Leaves the connection open
        when it was open before (the service loop), else logs out."""
        was_connected = self.mailbox.connected
        had_lease = self.lease.generation is not None
        if not was_connected:
            self.connect()
        try:
            return self.drain()
        finally:
            if not was_connected:
                self.disconnect()
            if not had_lease:
                release_quietly(self.lease, self.log)

    def drain(self, *, thread: bool = True) -> PollResult:
        """Take every message out of the folder (gateway.imap.drain); thread=True: then thread what was stored
        and file the quarantined mail."""
        assert self.mailbox.connected
        return self.drainer.run(thread=thread)

    def thread_stored(self, result: PollResult) -> bool:
        """Thread what this account stored and has not seen threaded (gateway.imap.threads)."""
        return self.threads.thread_stored(result)

    # The service loop -------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set: drain, then wait for new mail (IDLE or poll_seconds); reconnect with
        backoff on errors. Never raises for IMAP, network or database trouble; logs it and retries."""
        a = self.account
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_MAX)
        self.drainer.stop = stop
        self.log.info("polling %s@%s:%s folder %r", a.user, a.host, a.effective_port, a.folder)
        while not stop.is_set():
            try:
                if self._turn(stop, backoff):
                    continue
            except TlsSetupError as e:
                self._give_up(e)
                return
            except Exception as e:  # noqa: BLE001 -- network, server or database trouble: reconnect later
                self._trouble(e, backoff.current)
                self.disconnect()
                self.state = "backoff"
                wait_renewing(self.lease, stop, backoff.next())
        self.disconnect()
        release_quietly(self.lease, self.log)
        self.drainer.stop = None
        self.state = "stopped"
        self.log.info("stopped")

    def _turn(self, stop: threading.Event, backoff: Backoff) -> bool:
        """One turn of the loop: the lease, a connection, a drain, then a wait. True: go round at once."""
        a = self.account
        if not self._lease_for_loop():
            self._standby(stop)
            return True
        if not self.mailbox.connected:
            self.state = "connecting"
            self.connect()
            self.app.observe.state(f"imap {a.name}", True, f"{a.user}@{a.host}:{a.effective_port}", role="poller")
        self.state = "draining"
        result = self.drain()
        if result.standby or not self.lease.held():
            return True  # lost the lease: standby at the top of the loop
        if (result.deferred or result.postponed or result.paused) and not stop.is_set():
            # the store is down: keep the connection, retry after a growing pause
            self.state = "backoff"
            wait_renewing(self.lease, stop, backoff.next())
            return True
        backoff.reset()
        if self.mailbox.has_idle:
            self.state = "idling"
            self.mailbox.idle(stop, self.lease)
        else:
            self.state = "waiting"
            wait_renewing(self.lease, stop, a.poll_seconds)
        return False

    def _trouble(self, e: Exception, retry_in: float) -> None:
        """One line per change of state (gateway.observe), the retries themselves at DEBUG."""
        from gateway.observe import ImapPollError

        a = self.account
        if is_unavailable(e) and not isinstance(e, OSError):
            if not self.app.observe.state("database", False, f"{type(e).__name__}: {e}"):
                self.log.debug("database unavailable: %s; retrying in %.0f s", e, retry_in)
            return
        self.app.observe(ImapPollError(a.name))
        if not self.app.observe.state(f"imap {a.name}", False, f"{type(e).__name__}: {e}"):
            self.log.debug("IMAP error (%s: %s); reconnecting in %.0f s", type(e).__name__, e, retry_in)

    def _lease_for_loop(self) -> bool:
        """The service loop's ownership check: take the lease when free, renew it when due. Database errors
        propagate (the loop backs off)."""
        if self.lease.generation is None:
            return self.lease.claim()
        return self.lease.ensure()

    def _standby(self, stop: threading.Event) -> None:
        """Another instance polls this mailbox: no connection; try to take over every third of the lease."""
        a = self.account
        if self.mailbox.connected or self.state not in ("standby", "new"):
            self.disconnect()
        detail = self.lease.seen()
        if self.state != "standby":
            self.log.info("standby: another instance polls this mailbox (%s)", detail)
        self.state = "standby"
        self.app.observe.state(f"imap {a.name}", True, f"standby: {detail}", role="standby")
        stop.wait(self.lease.renew_every)

    def _give_up(self, e: TlsSetupError) -> None:
        """A TLS set-up that cannot work: one clear error, no retries (the operator fixes the certificate or
        ca_file and restarts). The lease is released: an instance configured differently may take over."""
        from gateway.observe import ImapPollError

        a = self.account
        self.error = str(e)
        self.disconnect()
        with contextlib.suppress(Exception):
            release_quietly(self.lease, self.log)
        self.app.observe(ImapPollError(a.name))
        self.app.observe.state(f"imap {a.name}", False, f"TLS: {e}; not retried", role="failed")
        self.log.error("%s; this account is not polled until the configuration is fixed and the service "
                       "restarted", e)
        self.drainer.stop = None
        self.state = "failed"


def wait_renewing(lease: Lease, stop: threading.Event, seconds: float) -> None:
    """Wait `seconds` (or until `stop`), renewing the lease when it is due; returns early when it is lost."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if lease.generation is not None:
            if lease.due() and not lease.ensure():
                return
            remaining = min(remaining, max(lease.renew_in(), 0.05))
        stop.wait(remaining)


def release_quietly(lease: Lease, log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> None:
    """Give the lease up; when the database is down it expires by itself."""
    try:
        lease.release()
    except Exception as e:  # noqa: BLE001 -- it expires by itself
        if not is_unavailable(e):
            raise
        log.debug("could not release the lease (%s); it expires in %.0f s", e, lease.ttl)


__all__ = ["ImapPoller", "release_quietly", "wait_renewing"]

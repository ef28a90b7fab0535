"""The IMAP poller: fetches mail from IMAP mailboxes (`[[imap]]` accounts) into the intake.

For every message in the account's folder (UNDELETED, in UID order, in batches of `batch_size`, at most
32 MiB of mail a batch):

1. look up its key (account, folder, UIDVALIDITY, UID) in `imap_seen`: a message already stored (a crash or
   an error after the commit, before the move) is only moved, never fetched again;
2. otherwise fetch `BODY.PEEK[]` (the \\Seen flag is left alone) for the whole batch, store the batch's mails
   with `Intake.store_many()` (durable, one commit for the batch) and record their keys (state `stored`);
3. only then move the whole batch to `processed_folder` with one UID MOVE of its UID set (UID COPY +
   \\Deleted + UID EXPUNGE without MOVE); the keys become `moved`, and where each message went (the server's
   UIDPLUS COPYUID answer) is recorded as a key in `processed_folder` (state `filed`);
4. after each pass over the folder, threading runs from the stored mail, as on the SMTP path
   (`thread_stored`: `Intake.process()` of each, in the order they were stored); the outcome is recorded on
   the keys, and a mail the pipeline quarantined is moved on from `processed_folder` to `quarantine_folder`
   by the UID it got there. Mail over `limits.max_message_size` goes to the quarantine folder unfetched.

Without UIDPLUS (so no way to find a moved message again) and with a quarantine folder of its own, the
poller threads each batch before it moves it instead (the slower order: stored, threaded, then moved by
outcome); `thread_after_move` forces either order.

Nothing is lost, nothing doubled: a crash between the commit and the move leaves the message in the folder,
found in `imap_seen` it is only moved; a crash after the move leaves it stored and not threaded, and the next
drain threads it (processing is idempotent; the service's sweep does it as well) and refiles it if it was
quarantined. A new UIDVALIDITY (the folder was recreated), or a crash before `imap_seen` was written, makes
the message be fetched and stored again; the core's dedupe (same Message-ID and sender, or same bytes)
records the second copy as a `duplicate`, so no second ticket is ever opened. (One narrow window is not
covered: a crash after the MOVE and before its record; the mail is stored and threaded, but if quarantined
it stays in `processed_folder`.) When the database is unreachable the message stays where it is and the
poller tries again later (backing off); stored mail whose threading was postponed is threaded on the next
drain.

One poller per mailbox across instances: every `serve` (and `imap poll`) sharing the database polls an
account only while it holds the account's lease (gateway.lease, name `imap:<account>`). The service loop
takes it when it is free, renews it every third of `lease_seconds` (also while it waits in IDLE or sleeps),
and checks it before every batch it stores; an instance without it stands by (no IMAP connection) and tries
again every third of `lease_seconds`, so it takes over within about 1.3 times `lease_seconds` of the holder's
death. A drain that lost the lease stops like a stopped one (what is committed is moved); the new holder
threads whatever its predecessor stored and did not thread. `imap poll` skips an account another instance
holds.

TLS: `security` 'tls' (implicit) or 'starttls', the certificate and host name verified against `ca_file` (or
the system's CAs). A certificate that is not accepted, or a `ca_file` that cannot be loaded, raises
TlsSetupError: the service loop logs it once, shows it in the account's state (/healthz) and stops polling
that account (no retries: the operator must act); `imap poll` exits 78.

Running it:

- once (tests, cron, `ticket-gateway imap poll`): `ImapPoller(app, account).poll_once()` drains the folder
  and returns a `PollResult` (counts);
- as a service: `ImapPoller(app, account).run(stop_event)` blocks until `stop_event` (a `threading.Event`)
  is set: drain, then IDLE (re-issued every `idle_seconds`) where the server has it, else sleep
  `poll_seconds`; reconnect with exponential backoff (1 s doubling to 5 min) on any IMAP or network error.
  `start_pollers(app, stop_event)` starts one daemon thread per configured account and returns the threads
  (join them after setting the event); from asyncio, `await run_pollers(app, stop_event)` runs them on a
  dedicated executor and returns when all have stopped. After `stop_event.set()` a poller finishes the mail
  in hand (moves what is committed), logs out and returns within about a second.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence

from sqlalchemy import func, select, tuple_

from gateway.db import StoreUnavailable, is_unavailable, retry_on_conflict, transaction
from gateway.lease import Lease
from gateway.models import ImapSeen

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from gateway.app import App
    from gateway.config import Config

log = logging.getLogger("gateway.imap")

DELETED = b"\\Deleted"
BODY = b"BODY[]"
MAX_BATCH_BYTES = 32 * 1024 * 1024  # a batch's fetch stops growing at this many bytes (one big mail alone)
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 300.0
THREAD_CHUNK = 100  # mails threaded between two records of their outcomes
STOP_CHECK = 1.0  # how often a blocking wait looks at the stop event, in seconds


@dataclass(frozen=True)
class ImapAccount:
    """One `[[imap]]` table."""

    name: str
    host: str
    user: str
    port: int = 0
    security: str = "tls"  # tls | starttls | none
    password: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    address: str = ""
    poll_seconds: float = 60.0
    idle_seconds: float = 300.0
    batch_size: int = 50
    timeout_seconds: float = 60.0
    ca_file: str = ""
    lease_seconds: float = 30.0
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_config(cls, table: Mapping[str, Any], base_dir: Path | None = None) -> ImapAccount:
        known = {f for f in cls.__dataclass_fields__ if f != "base_dir"}
        values = {k: v for k, v in table.items() if k in known}
        return cls(**values, base_dir=base_dir or Path.cwd())

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    def _path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def secret(self) -> str:
        if self.password_file:
            lines = self._path(self.password_file).read_text().splitlines()
            return lines[0] if lines else ""
        return self.password

    def ssl_context(self) -> ssl.SSLContext:
        """Certificates and host name verified, against `ca_file` only when given, else the system's CAs.
        Raises TlsSetupError when the CA file cannot be used."""
        if not self.ca_file:
            return ssl.create_default_context()
        path = self._path(self.ca_file)
        try:
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"ca_file {path}: cannot load CA certificates: {e}") from e

    def ref(self, folder: str, uidvalidity: int, uid: int) -> str:
        return f"{self.name}/{folder}/{uidvalidity}/{uid}"


def accounts(config: Config) -> list[ImapAccount]:
    """The configured `[[imap]]` accounts. Raises ConfigError for duplicate names or both password keys."""
    from gateway.config import ConfigError

    out: list[ImapAccount] = []
    for i, table in enumerate(config.values.get("imap", [])):
        acct = ImapAccount.from_config(table, config.base_dir)
        if any(a.name == acct.name for a in out):
            raise ConfigError(f"imap[{i}].name: {acct.name!r} is used by another [[imap]] account")
        if acct.password and acct.password_file:
            raise ConfigError(f"imap[{i}].password_file: give password or password_file, not both")
        for key in ("processed_folder", "quarantine_folder"):
            if getattr(acct, key) == acct.folder:
                raise ConfigError(f"imap[{i}].{key}: must differ from folder ({acct.folder!r})")
        out.append(acct)
    return out


@dataclass
class PollResult:
    """What one drain did. `outcomes` counts the pipeline outcomes of mails threaded in this drain."""

    account: str
    uidvalidity: int | None = None
    found: int = 0           # messages in the folder when the drain started (UNDELETED)
    fetched: int = 0         # bodies fetched
    stored: int = 0          # stored through the intake
    known: int = 0           # already stored before (crash or error before the move): moved without fetching
    moved: int = 0           # moved to the processed folder
    quarantined: int = 0     # moved to the quarantine folder (pipeline quarantine, or over the size limit)
    oversize: int = 0        # over limits.max_message_size: not fetched, moved to quarantine
    deferred: int = 0        # left in place: the database was unavailable
    failed: int = 0          # an unexpected error (logged): left in place, or not threaded; tried again later
    threaded: int = 0        # stored mails threaded in this drain (also ones stored by an earlier drain)
    postponed: int = 0       # stored and moved, threading postponed (store unavailable, stopping)
    paused: bool = False     # nothing fetched: the data directory is nearly full (gateway.guard.diskspace)
    standby: str = ""        # nothing done: another instance polls this mailbox (who holds the lease)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def store_unavailable(self) -> bool:
        return self.deferred > 0

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "uidvalidity": self.uidvalidity, "found": self.found,
                "fetched": self.fetched, "stored": self.stored, "known": self.known, "moved": self.moved,
                "quarantined": self.quarantined, "oversize": self.oversize, "deferred": self.deferred,
                "failed": self.failed, "threaded": self.threaded, "postponed": self.postponed,
                "paused": self.paused, "standby": self.standby, "outcomes": dict(self.outcomes)}


class Deferred(Exception):
    """The database is unavailable: stop this drain, leave the rest in place."""


class Stopped(Exception):
    """The stop event was set, or the lease was lost: the drain ends after the mails in hand are moved."""


class TlsSetupError(Exception):
    """TLS cannot work with this configuration: the server's certificate was not accepted (unknown CA,
    expired, wrong host name) or the CA file cannot be used. Not retried: the operator must act."""


class _Prefixed(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"imap {self.extra['account']}: {msg}", kwargs  # type: ignore[index]


class ImapPoller:
    """Drains one account's folder into the intake; see the module docstring."""

    def __init__(self, app: App, account: ImapAccount | Mapping[str, Any], *,
                 client_factory: Any = None) -> None:
        self.app = app
        self.account = account if isinstance(account, ImapAccount) else ImapAccount.from_config(
            account, app.config.base_dir)
        self.intake = app.intake()
        self.max_size = int(app.config.get("limits", "max_message_size"))
        self._client_factory = client_factory
        self.client: IMAPClient | None = None
        self.capabilities: frozenset[bytes] = frozenset()
        self.use_move: bool | None = None  # None: MOVE when the server has it; tests force False
        # test hook: called after a batch was stored and recorded, before it is moved; raising simulates a crash
        self.before_move: Any = None
        # None: thread after the move when possible (see `decoupled`); tests force True/False
        self.thread_after_move: bool | None = None
        self._moved_here: set[int] = set()  # mail ids moved to processed_folder in the current drain
        self._failed_here: set[int] = set()  # mail ids whose threading failed in the current drain (not retried)
        self._thread_floor = 0  # mail ids up to here are threaded and recorded (see thread_stored)
        # what the service loop is doing: new | connecting | draining | waiting | idling | backoff | stopped
        self.state = "new"
        self.idling = threading.Event()  # set while the loop waits in IDLE (tests wait for it)
        self.idle_count = 0  # IDLE commands issued
        self.log = _Prefixed(log, {"account": self.account.name})
        self._stop: threading.Event | None = None  # set by run(): a drain stops between mails
        # one poller per mailbox across every instance on this database (gateway.lease)
        self.lease = Lease(app.sessions, f"imap:{self.account.name}", app.instance, self.account.lease_seconds)
        self.error: str = ""  # set when the poller gave up for good (TlsSetupError)
        self._tenure: int | None = None  # the lease generation the last drain ran under

    # Connection ---------------------------------------------------------------------------------------------
    def connect(self) -> IMAPClient:
        from imapclient import IMAPClient
        from imapclient.imapclient import SocketTimeout

        a = self.account
        timeout = SocketTimeout(connect=a.timeout_seconds, read=a.timeout_seconds)
        if self._client_factory is not None:
            client = self._client_factory(a)
        elif a.security == "none":
            client = IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout)
        else:
            client = connect_tls(a, timeout)
        try:
            client.login(a.user, a.secret())
            self.capabilities = frozenset(c.upper() for c in client.capabilities())
            self.client = client
            self._ensure_folders()
        except BaseException:
            self._close(client)
            self.client = None
            raise
        self.log.debug("connected to %s:%s as %s", a.host, a.effective_port, a.user)
        return client

    def disconnect(self) -> None:
        if self.client is not None:
            self._close(self.client)
        self.client = None

    @staticmethod
    def _close(client: IMAPClient) -> None:
        try:
            client.logout()
        except Exception:  # noqa: BLE001 -- already gone
            try:
                client.shutdown()
            except Exception:  # noqa: BLE001
                pass

    def _ensure_folders(self) -> None:
        assert self.client is not None
        for folder in {self.account.processed_folder, self.account.quarantine_folder}:
            if folder and not self.client.folder_exists(folder):
                try:
                    self.client.create_folder(folder)
                    self.log.info("created folder %r", folder)
                except self.client.Error:
                    if not self.client.folder_exists(folder):  # created concurrently is fine
                        raise

    def _select(self) -> int:
        assert self.client is not None
        info = self.client.select_folder(self.account.folder)
        return int(info[b"UIDVALIDITY"])

    @property
    def has_move(self) -> bool:
        return b"MOVE" in self.capabilities if self.use_move is None else self.use_move

    @property
    def has_idle(self) -> bool:
        return b"IDLE" in self.capabilities

    # One drain ----------------------------------------------------------------------------------------------
    def poll_once(self) -> PollResult:
        """Connect (if not connected), drain the folder, and return the counts. Leaves the connection open
        when it was open before (the service loop), else logs out."""
        was_connected = self.client is not None
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
        """Take every message out of the folder, in batches, until it is empty (or the store is down); then
        (thread=True) thread what was stored and file the quarantined mail (see `thread_stored`)."""
        assert self.client is not None
        total = PollResult(self.account.name)
        if self.app.disk is not None and self.app.disk.low():
            total.paused = True  # the data directory is nearly full: the mail stays on the server for now
            return total
        if not self._own_lease(total):
            return total
        self._moved_here = set()
        self._failed_here = set()
        tried: set[int] = set()
        uidvalidity: int | None = None
        while True:
            validity = self._select()
            if validity != uidvalidity:
                if uidvalidity is not None:
                    self.log.warning("UIDVALIDITY of %r changed (%s -> %s)", self.account.folder, uidvalidity,
                                     validity)
                uidvalidity, tried = validity, set()
            total.uidvalidity = uidvalidity
            uids = sorted(set(self.client.search(["UNDELETED"])) - tried)
            if not uids:
                break
            tried.update(uids)
            total.found += len(uids)
            try:
                self._drain_uids(uidvalidity, uids, total)
            except (Deferred, Stopped):
                break
            if thread and self.decoupled:
                # thread this pass's mail before looking again: a steady stream cannot starve threading
                if not self.thread_stored(total):
                    thread = False  # the store is down or we are stopping: the next drain threads the rest
            # new mail may have arrived meanwhile: look again (messages tried in this drain are not retried)
        if thread and self.decoupled and not total.deferred and not self._stopping():
            self.thread_stored(total)  # mail stored by an earlier drain that did not get to thread it
        if total.deferred:
            self.log.warning("database unavailable: %d message(s) left in %r for later", total.deferred,
                             self.account.folder)
        elif total.fetched or total.known or total.oversize or total.threaded:
            self.log.info("drained %r: %s", self.account.folder, total.as_dict())
        return total

    def _stopping(self) -> bool:
        """Stop requested, or the lease on this mailbox was lost (another instance polls it now)."""
        if self._stop is not None and self._stop.is_set():
            return True
        if not self.lease.ensure():
            self.log.warning("lost the lease on this mailbox (%s): stopping this drain",
                             self.lease.seen())
            return True
        return False

    # The lease: one poller per mailbox across instances -----------------------------------------------------
    def _own_lease(self, result: PollResult) -> bool:
        """Hold (take or renew) the mailbox's lease before draining. False: another instance holds it
        (`result.standby` says who), or the database is down (`result.deferred`: the mail stays)."""
        try:
            held = self.lease.claim() if self.lease.generation is None else self.lease.ensure()
        except Exception as e:
            if not is_unavailable(e):
                raise
            assert self.client is not None
            self._select()
            result.deferred = len(self.client.search(["UNDELETED"]))
            self.log.warning("database unavailable (%s): %d message(s) left for later", e, result.deferred)
            return False
        if not held:
            result.standby = self.lease.seen()
            return False
        if self.lease.generation != self._tenure:  # a new tenure: thread what an earlier holder did not
            self._tenure, self._thread_floor = self.lease.generation, 0
            self.log.info("polling this mailbox (lease generation %s, %.0f s)", self.lease.generation,
                          self.lease.ttl)
        return True

    def _still_ours(self) -> None:
        """Right before a store: a fetch that outlasted the lease (another instance took over and fetches the
        same messages) stores nothing."""
        if not self.lease.ensure():
            raise Stopped()

    @property
    def decoupled(self) -> bool:
        """Store + move first, thread after the move (the fast path). Needs the moved message's new UID
        (UIDPLUS COPYUID) only when a quarantined mail must be refiled from processed_folder to
        quarantine_folder; without UIDPLUS the poller threads before it moves (the slow path)."""
        if self.thread_after_move is not None:
            return self.thread_after_move
        return not self._needs_refile or b"UIDPLUS" in self.capabilities

    @property
    def _needs_refile(self) -> bool:
        a = self.account
        return bool(a.processed_folder and a.quarantine_folder and a.quarantine_folder != a.processed_folder)

    def _drain_uids(self, uidvalidity: int, uids: list[int], result: PollResult) -> None:
        left_before = result.moved + result.quarantined
        try:
            for chunk in _chunks(uids, max(self.account.batch_size, 1) * 4):
                if self._stopping():
                    raise Stopped()
                self._drain_chunk(uidvalidity, chunk, result)
        except Deferred:
            # whatever was not moved stays in the folder for the next drain
            result.deferred += len(uids) - (result.moved + result.quarantined - left_before)
            raise

    def _drain_chunk(self, uidvalidity: int, chunk: list[int], result: PollResult) -> None:
        a = self.account
        try:
            known = self._known(uidvalidity, chunk)
        except Exception as e:
            if is_unavailable(e):
                raise Deferred() from e
            raise
        # sizes first: batches stay bounded in bytes, and oversize mail is never fetched
        sizes = self._sizes(chunk)
        todo: list[int] = []
        to_processed: list[int] = []
        to_quarantine: list[int] = []
        decoupled = self.decoupled
        to_file: dict[int, int] = {}  # decoupled: stored before, not threaded yet: uid -> mail id
        for uid in chunk:
            if uid not in sizes:  # expunged meanwhile
                continue
            row = known.get(uid)
            if row is not None and (row.state in ("processed", "moved") or (row.outcome and row.mail_id)):
                # stored and threaded before; the move did not happen (crash, error): only move it now
                result.known += 1
                (to_quarantine if row.outcome == "quarantined" else to_processed).append(uid)
            elif decoupled and row is not None and row.mail_id is not None:
                # committed before (crash, error before the move): moved with the next batch, never refetched
                result.known += 1
                to_file[uid] = row.mail_id
            elif sizes[uid] > self.max_size:
                self.log.warning("uid %s is %d bytes, over limits.max_message_size: moved to %r unfetched",
                                 uid, sizes[uid], a.quarantine_folder)
                result.oversize += 1
                to_quarantine.append(uid)
            else:
                todo.append(uid)
        self._move_batch(uidvalidity, to_processed, to_quarantine, result)
        if not decoupled:
            for batch in _batches(todo, sizes, max(a.batch_size, 1), MAX_BATCH_BYTES):
                if self._stopping():
                    raise Stopped()
                self._handle_batch(uidvalidity, batch, known, result)
            return
        if to_file:
            self._store_and_file(uidvalidity, [], to_file, result)
        for batch in _batches(todo, sizes, max(a.batch_size, 1), MAX_BATCH_BYTES):
            if self._stopping():
                raise Stopped()
            self._store_and_file(uidvalidity, batch, {}, result)

    # The fast path: store, move, thread later -------------------------------------------------------------
    def _store_and_file(self, uidvalidity: int, batch: list[int], stored: dict[int, int],
                        result: PollResult) -> None:
        """Fetch a batch, store its mails in one transaction (one commit), record their keys (state
        `stored`), and only then move the whole batch to processed_folder with one UID MOVE of the UID set.
        `stored` (uid -> mail id) are messages committed earlier: moved with the batch, not fetched again.
        Threading follows later (`thread_stored`), from the stored mail."""
        assert self.client is not None
        mail_ids: dict[int, int] = dict(stored)
        fresh: list[tuple[int, bytes]] = []
        if batch:
            data = self.client.fetch(batch, ["BODY.PEEK[]"])
            for uid in batch:
                item = data.get(uid)
                raw = item.pop(BODY, None) if item else None
                if raw is None:  # expunged meanwhile
                    continue
                result.fetched += 1
                fresh.append((uid, raw))
            del data
        if fresh:
            self._still_ours()
            ids = self._store_fresh(uidvalidity, fresh, result)
            new = {uid: mail_id for (uid, _), mail_id in zip(fresh, ids)}
            del fresh
            try:
                self._record(uidvalidity, [], sorted(new.items()))
            except Exception as e:
                if not is_unavailable(e):
                    raise
                # committed but not recorded: it stays; the next drain stores it again (the core dedupes)
                self.log.warning("could not record IMAP state (%s); %d message(s) stay for the next poll", e,
                                 len(new))
                raise Deferred() from e
            mail_ids.update(new)
        if not mail_ids:
            return
        uids = sorted(mail_ids)
        if self.before_move is not None:
            self.before_move(uids)
        a = self.account
        dest = self._move(uids, a.processed_folder, track=self._needs_refile)
        result.moved += len(uids)
        self._moved_here.update(mail_ids.values())
        self._mark_filed(uidvalidity, mail_ids, dest)

    def _store_fresh(self, uidvalidity: int, fresh: list[tuple[int, bytes]], result: PollResult) -> list[int]:
        """Store fetched messages in one transaction (one commit); their mail ids, in order. Store down:
        Deferred (nothing was stored, everything stays in the folder)."""
        try:
            auth = self.app.auth
            items = [(raw, self._envelope(uidvalidity, uid)) for uid, raw in fresh]
            if auth is not None and auth.active:  # sender authentication on arrival (gateway.auth), no lock held
                items = [(raw, auth.envelope(raw, env)) for raw, env in items]
            ids = self.intake.store_many(items)
        except Exception as e:
            if isinstance(e, StoreUnavailable) or is_unavailable(e):
                raise Deferred() from e
            raise
        result.stored += len(ids)
        return ids

    def _mark_filed(self, uidvalidity: int, mail_ids: Mapping[int, int], dest: Mapping[int, tuple[int, int]]) -> None:
        """After the move: the source keys are `moved`; each message's new key in processed_folder (when the
        server told it, UIDPLUS) is recorded as `filed`, so that a quarantined mail can be refiled later."""
        a = self.account
        now = self.app.clock()
        to = a.processed_folder or None

        def write() -> None:
            with transaction(self.app.sessions) as s:
                for r in s.scalars(select(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                        ImapSeen.uidvalidity == uidvalidity, ImapSeen.uid.in_(list(mail_ids)))):
                    r.state, r.moved_to, r.updated_at = "moved", to, now
                if dest:
                    old = {(r.uidvalidity, r.uid): r for r in s.scalars(select(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.folder == a.processed_folder,
                        tuple_(ImapSeen.uidvalidity, ImapSeen.uid).in_(list(dest.values()))))}
                    for uid, key in dest.items():
                        r = old.get(key)
                        if r is None:
                            s.add(ImapSeen(account=a.name, folder=a.processed_folder, uidvalidity=key[0],
                                           uid=key[1], mail_id=mail_ids[uid], state="filed", outcome=None,
                                           created_at=now, updated_at=now))
                        else:  # a stale row (the folder was recreated with the same UIDVALIDITY)
                            r.mail_id, r.state, r.outcome, r.moved_to, r.updated_at = (mail_ids[uid], "filed",
                                                                                       None, None, now)

        try:
            retry_on_conflict(write)
        except Exception as e:  # noqa: BLE001 -- the messages left the folder; they are stored and get threaded
            if not is_unavailable(e):
                raise
            self.log.warning("could not mark %d message(s) as moved: %s", len(mail_ids), e)

    def thread_stored(self, result: PollResult) -> bool:
        """Thread (Intake.process, in the order they were stored) every mail this account stored and has not
        seen threaded yet, record the outcomes, and move the quarantined ones from processed_folder to
        quarantine_folder. Returns False when it stopped early (store unavailable, stop requested): the rest
        waits for the next drain (or the service's sweep; processing is idempotent)."""
        a = self.account
        complete = True
        last = self._thread_floor  # this poller has seen every mail id up to here threaded and recorded
        low: int | None = None     # the lowest mail id left unthreaded (or unrecorded) by this call

        def left(mail_id: int) -> None:
            nonlocal low
            low = mail_id if low is None else min(low, mail_id)

        while complete:
            with self.app.sessions() as s:
                rows = list(s.execute(select(ImapSeen.id, ImapSeen.mail_id, ImapSeen.state, ImapSeen.moved_to)
                                      .where(ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                                             ImapSeen.outcome.is_(None), ImapSeen.mail_id.is_not(None),
                                             ImapSeen.mail_id > last)
                                      .order_by(ImapSeen.mail_id).limit(THREAD_CHUNK)))
            if not rows:
                break
            last = rows[-1].mail_id
            done: list[tuple[Any, str]] = []
            for row in rows:
                if row.mail_id in self._failed_here:
                    left(row.mail_id)
                    continue
                if self._stopping():
                    complete = False
                    left(row.mail_id)
                    break
                try:
                    res = self.intake.process(row.mail_id)
                except Exception as e:  # noqa: BLE001
                    left(row.mail_id)
                    if isinstance(e, StoreUnavailable) or is_unavailable(e):
                        self.log.warning("database unavailable while threading (%s); the rest is threaded later",
                                         e)
                        complete = False
                        break
                    self.log.exception("mail %s: could not be threaded; tried again on the next drain",
                                       row.mail_id)
                    result.failed += 1
                    self._failed_here.add(row.mail_id)
                    continue
                result.threaded += 1
                result.outcomes[res.outcome] += 1
                done.append((row, res.outcome))
            if not self._settle(done, result):
                left(done[0][0].mail_id)
        # later calls start after what is settled (the mail_id index), not at the start of the account's history
        self._thread_floor = max(self._thread_floor, (low - 1) if low is not None else last)
        if not complete:
            try:
                with self.app.sessions() as s:
                    result.postponed += s.scalar(select(func.count()).select_from(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.folder == a.folder, ImapSeen.outcome.is_(None),
                        ImapSeen.mail_id.is_not(None), ImapSeen.mail_id.not_in(list(self._failed_here) or [0])))
            except Exception as e:  # noqa: BLE001 -- a count for the report only
                if not is_unavailable(e):
                    raise
                result.postponed += 1
        return complete

    def _settle(self, done: list[tuple[Any, str]], result: PollResult) -> bool:
        """Record the outcomes of threaded mails; refile the quarantined ones that sit in processed_folder.
        Returns False when the outcomes could not be recorded (the database is unavailable)."""
        if not done:
            return True
        a = self.account
        now = self.app.clock()
        refile: dict[int, tuple[int, int]] = {}  # mail id -> its key in processed_folder
        quarantined = {row.mail_id for row, outcome in done if outcome == "quarantined"}
        if quarantined and self._needs_refile:
            with self.app.sessions() as s:
                for r in s.execute(select(ImapSeen.mail_id, ImapSeen.uidvalidity, ImapSeen.uid).where(
                        ImapSeen.account == a.name, ImapSeen.folder == a.processed_folder,
                        ImapSeen.state == "filed", ImapSeen.mail_id.in_(list(quarantined)))):
                    refile[r.mail_id] = (r.uidvalidity, r.uid)
        refiled = self._refile(refile) if refile else set()
        for mail_id in refiled:
            result.quarantined += 1
            if mail_id in self._moved_here:
                result.moved -= 1
        for mail_id in {row.mail_id for row, o in done if o == "quarantined" and row.state == "moved"
                        and row.moved_to == a.processed_folder and self._needs_refile} - set(refile):
            self.log.warning("mail %s was quarantined but its place in %r is unknown: it stays there", mail_id,
                             a.processed_folder)
        outcome_of = {row.mail_id: outcome for row, outcome in done}

        def write() -> None:
            with transaction(self.app.sessions) as s:
                for r in s.scalars(select(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.mail_id.in_(list(outcome_of)),
                        ImapSeen.folder.in_([a.folder, a.processed_folder]))):
                    if r.folder == a.folder and r.outcome is None:
                        r.outcome = outcome_of[r.mail_id]
                        if r.mail_id in refiled:
                            r.moved_to = a.quarantine_folder
                        # state `stored`: still in the folder (not moved yet); the drain moves it by its outcome
                        r.updated_at = now
                    elif r.folder == a.processed_folder and r.state == "filed":
                        r.outcome = outcome_of[r.mail_id]
                        if r.mail_id in refiled:
                            r.state, r.moved_to = "moved", a.quarantine_folder
                        else:
                            r.state = "processed"
                        r.updated_at = now

        try:
            retry_on_conflict(write)
        except Exception as e:  # noqa: BLE001 -- bookkeeping: threading is idempotent, it is done again
            if not is_unavailable(e):
                raise
            self.log.warning("could not record the outcome of %d mail(s): %s", len(done), e)
            return False
        return True

    def _refile(self, keys: Mapping[int, tuple[int, int]]) -> set[int]:
        """Move messages (mail id -> (UIDVALIDITY, UID) in processed_folder) to quarantine_folder; returns the
        mail ids moved. Selects processed_folder for it, then the polled folder again."""
        assert self.client is not None
        a = self.account
        moved: set[int] = set()
        try:
            info = self.client.select_folder(a.processed_folder)
            validity = int(info[b"UIDVALIDITY"])
            wanted = {uid: mail_id for mail_id, (v, uid) in keys.items() if v == validity}
            if len(wanted) < len(keys):
                self.log.warning("UIDVALIDITY of %r changed: %d quarantined mail(s) stay there",
                                 a.processed_folder, len(keys) - len(wanted))
            present = set(self.client.search(["UID", _uid_set(sorted(wanted))])) if wanted else set()
            uids = sorted(u for u in wanted if u in present)
            if uids:
                self._move(uids, a.quarantine_folder)
                moved = {wanted[u] for u in uids}
        finally:
            self.client.select_folder(a.folder)
        return moved

    def _envelope(self, uidvalidity: int, uid: int):  # type: ignore[no-untyped-def]
        from gateway.intake import Envelope

        a = self.account
        return Envelope(mail_from=None, rcpt_tos=(a.address.lower(),) if a.address else (), source="imap",
                        source_ref=a.ref(a.folder, uidvalidity, uid))

    def _handle_batch(self, uidvalidity: int, batch: list[int], known: dict[int, ImapSeen],
                      result: PollResult) -> None:
        """Fetch a batch, store the new mails in one transaction (one commit for the batch), thread them one
        by one, record their keys, then move them."""
        assert self.client is not None
        data = self.client.fetch(batch, ["BODY.PEEK[]"])
        mail_ids: dict[int, int] = {}  # uid -> stored mail id, in UID order
        fresh: list[tuple[int, bytes]] = []
        for uid in batch:
            item = data.get(uid)
            raw = item.get(BODY) if item else None
            if raw is None:  # expunged meanwhile
                continue
            result.fetched += 1
            row = known.get(uid)
            if row is not None and row.mail_id is not None:
                mail_ids[uid] = row.mail_id  # stored before, threading did not finish
            else:
                fresh.append((uid, bytes(raw)))
                mail_ids[uid] = 0
        if fresh:
            self._still_ours()
            ids = self._store_fresh(uidvalidity, fresh, result)
            for (uid, _), mail_id in zip(fresh, ids):
                mail_ids[uid] = mail_id
        del data, fresh
        done: list[tuple[int, int, str]] = []  # (uid, mail_id, outcome)
        pending: list[tuple[int, int]] = []    # stored, not threaded: the next drain threads, never re-stores
        unavailable: BaseException | None = None
        stopped = False
        for uid, mail_id in mail_ids.items():
            if unavailable is not None or stopped or (self._stop is not None and self._stop.is_set()):
                stopped = unavailable is None
                pending.append((uid, mail_id))  # stays in the folder for the next drain
                continue
            try:
                res = self.intake.process(mail_id)
            except Exception as e:  # noqa: BLE001
                pending.append((uid, mail_id))
                if isinstance(e, StoreUnavailable) or is_unavailable(e):
                    unavailable = e
                    continue
                # not the store's fault and not quarantined by the pipeline: leave this one, go on
                self.log.exception("uid %s: could not be processed; it stays in %r", uid, self.account.folder)
                result.failed += 1
                continue
            result.outcomes[res.outcome] += 1
            done.append((uid, mail_id, res.outcome))
        # remember what was stored; if that fails it only costs a refetch (the core dedupes)
        pending = [(u, m) for u, m in pending if not (known.get(u) is not None and known[u].mail_id == m)]
        try:
            self._record(uidvalidity, done, pending)
        except Exception as e:
            if not is_unavailable(e):
                raise
            self.log.warning("could not record IMAP state (%s); the messages stay for the next poll", e)
            unavailable = unavailable or e
            done = []
        if self.before_move is not None and done:
            self.before_move([u for u, _, _ in done])
        self._move_batch(uidvalidity, [u for u, _, o in done if o != "quarantined"],
                         [u for u, _, o in done if o == "quarantined"], result)
        if unavailable is not None:
            raise Deferred() from unavailable
        if stopped:
            raise Stopped()

    # State ----------------------------------------------------------------------------------------------------
    def _known(self, uidvalidity: int, uids: Sequence[int]) -> dict[int, ImapSeen]:
        a = self.account
        with self.app.sessions() as s:
            rows = s.scalars(select(ImapSeen).where(ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                                                    ImapSeen.uidvalidity == uidvalidity,
                                                    ImapSeen.uid.in_(list(uids))))
            return {r.uid: r for r in rows}

    def _record(self, uidvalidity: int, done: list[tuple[int, int, str]], pending: list[tuple[int, int]]) -> None:
        if not done and not pending:
            return
        a = self.account
        now = self.app.clock()
        rows = [(uid, mail_id, "processed", outcome) for uid, mail_id, outcome in done]
        rows += [(uid, mail_id, "stored", None) for uid, mail_id in pending]

        def write() -> None:
            with transaction(self.app.sessions) as s:
                uids = [r[0] for r in rows]
                existing = {r.uid: r for r in s.scalars(select(ImapSeen).where(
                    ImapSeen.account == a.name, ImapSeen.folder == a.folder, ImapSeen.uidvalidity == uidvalidity,
                    ImapSeen.uid.in_(uids)))}
                for uid, mail_id, state, outcome in rows:
                    r = existing.get(uid)
                    if r is None:
                        s.add(ImapSeen(account=a.name, folder=a.folder, uidvalidity=uidvalidity, uid=uid,
                                       mail_id=mail_id, state=state, outcome=outcome, created_at=now,
                                       updated_at=now))
                    else:
                        r.mail_id, r.state, r.outcome, r.updated_at = mail_id, state, outcome, now

        retry_on_conflict(write)

    def _mark_moved(self, uidvalidity: int, moved: Iterable[tuple[int, str]]) -> None:
        moved = list(moved)
        if not moved:
            return
        a = self.account
        now = self.app.clock()
        by_folder: dict[str, list[int]] = {}
        for uid, folder in moved:
            by_folder.setdefault(folder, []).append(uid)
        try:
            with transaction(self.app.sessions) as s:
                for folder, uids in by_folder.items():
                    for r in s.scalars(select(ImapSeen).where(
                            ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                            ImapSeen.uidvalidity == uidvalidity, ImapSeen.uid.in_(uids))):
                        r.state = "moved"
                        r.moved_to = folder
                        r.updated_at = now
        except Exception as e:  # noqa: BLE001 -- bookkeeping only: the messages have left the folder
            if not is_unavailable(e):
                raise
            self.log.warning("could not mark %d message(s) as moved: %s", len(moved), e)

    # Moving ---------------------------------------------------------------------------------------------------
    def _move_batch(self, uidvalidity: int, to_processed: list[int], to_quarantine: list[int],
                    result: PollResult) -> None:
        a = self.account
        moved: list[tuple[int, str]] = []
        if to_processed:
            self._move(to_processed, a.processed_folder)
            result.moved += len(to_processed)
            moved += [(u, a.processed_folder) for u in to_processed]
        if to_quarantine:
            self._move(to_quarantine, a.quarantine_folder or a.processed_folder)
            result.quarantined += len(to_quarantine)
            moved += [(u, a.quarantine_folder or a.processed_folder) for u in to_quarantine]
        self._mark_moved(uidvalidity, moved)

    def _move(self, uids: list[int], folder: str, *, track: bool = False) -> dict[int, tuple[int, int]]:
        """UID MOVE (or UID COPY + \\Deleted + UID EXPUNGE) of a UID set. track=True: returns where each
        message went, uid -> (UIDVALIDITY, UID) in `folder`, from the server's COPYUID (UIDPLUS); {} when
        the server did not say."""
        assert self.client is not None
        if not folder:
            # no destination configured: flag and expunge (the mail lives on in the gateway)
            self.client.add_flags(uids, [DELETED], silent=True)
            self._expunge(uids)
            return {}
        untagged = getattr(getattr(self.client, "_imap", None), "untagged_responses", None)
        if track and isinstance(untagged, dict):
            untagged.pop("COPYUID", None)
        if self.has_move:
            self.client.move(uids, folder)
        else:
            self.client.copy(uids, folder)
        copyuid = untagged.pop("COPYUID", None) if track and isinstance(untagged, dict) else None
        if not self.has_move:
            self.client.add_flags(uids, [DELETED], silent=True)
            self._expunge(uids)
        if not copyuid:
            return {}
        wanted = set(uids)
        out: dict[int, tuple[int, int]] = {}
        for line in copyuid:
            out.update((src, key) for src, key in _parse_copyuid(line).items() if src in wanted)
        return out

    def _expunge(self, uids: list[int]) -> None:
        assert self.client is not None
        if b"UIDPLUS" in self.capabilities:
            self.client.uid_expunge(uids)
        else:  # without UIDPLUS only a plain EXPUNGE exists: it also removes others' \Deleted messages
            self.client.expunge()

    def _sizes(self, uids: Sequence[int]) -> dict[int, int]:
        assert self.client is not None
        wanted = set(uids)
        data = self.client.fetch(list(uids), ["RFC822.SIZE"])
        return {uid: int(d.get(b"RFC822.SIZE", 0)) for uid, d in data.items() if uid in wanted}

    # The service loop -----------------------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set: drain, then wait for new mail (IDLE or poll_seconds); reconnect with
        backoff on errors. Never raises for IMAP, network or database trouble; logs it and retries."""
        a = self.account
        backoff = BACKOFF_FIRST
        self._stop = stop
        self.log.info("polling %s@%s:%s folder %r", a.user, a.host, a.effective_port, a.folder)
        while not stop.is_set():
            try:
                if not self._lease_for_loop():
                    self._standby(stop)
                    continue
                if self.client is None:
                    self.state = "connecting"
                    self.connect()
                    self.app.observe.state(f"imap {a.name}", True, f"{a.user}@{a.host}:{a.effective_port}",
                                           role="poller")
                self.state = "draining"
                result = self.drain()
                if result.standby or not self.lease.held():
                    continue  # lost the lease: standby at the top of the loop
                if (result.deferred or result.postponed or result.paused) and not stop.is_set():
                    # the store is down: keep the connection, retry after a growing pause
                    self.state = "backoff"
                    wait_renewing(self.lease, stop, backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                backoff = BACKOFF_FIRST
                if self.has_idle:
                    self._idle(stop)
                else:
                    self.state = "waiting"
                    wait_renewing(self.lease, stop, a.poll_seconds)
            except TlsSetupError as e:
                self._give_up(e)
                return
            except Exception as e:  # noqa: BLE001 -- network, server or database trouble: reconnect later
                # one line per change of state (gateway.observe), the retries themselves at DEBUG
                if is_unavailable(e) and not isinstance(e, (OSError,)):
                    if not self.app.observe.state("database", False, f"{type(e).__name__}: {e}"):
                        self.log.debug("database unavailable: %s; retrying in %.0f s", e, backoff)
                else:
                    from gateway.observe import ImapPollError

                    self.app.observe(ImapPollError(a.name))
                    if not self.app.observe.state(f"imap {a.name}", False, f"{type(e).__name__}: {e}"):
                        self.log.debug("IMAP error (%s: %s); reconnecting in %.0f s", type(e).__name__, e, backoff)
                self.disconnect()
                self.state = "backoff"
                wait_renewing(self.lease, stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
        self.disconnect()
        release_quietly(self.lease, self.log)
        self._stop = None
        self.state = "stopped"
        self.log.info("stopped")

    def _lease_for_loop(self) -> bool:
        """The service loop's ownership check: take the lease when free, renew it when due. Database errors
        propagate (the loop backs off)."""
        if self.lease.generation is None:
            return self.lease.claim()
        return self.lease.ensure()

    def _standby(self, stop: threading.Event) -> None:
        """Another instance polls this mailbox: no connection; try to take over every third of the lease."""
        a = self.account
        if self.client is not None or self.state not in ("standby", "new"):
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
        self._stop = None
        self.state = "failed"

    def _idle(self, stop: threading.Event) -> None:
        """IDLE until new mail, `idle_seconds` (then re-issued by the caller) or `stop`. Raises ConnectionError
        when the connection died (an empty answer long before the timeout: the socket hit EOF)."""
        assert self.client is not None
        client = self.client
        client.idle()
        self.idle_count += 1
        self.state = "idling"
        self.idling.set()
        deadline = time.monotonic() + self.account.idle_seconds
        new_mail = False
        dead = False
        try:
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.lease.due() and not self.lease.ensure():
                    self.log.warning("lost the lease on this mailbox during IDLE")
                    break
                wait = min(STOP_CHECK, remaining, max(self.lease.renew_in(), 0.05))
                started = time.monotonic()
                responses = client.idle_check(timeout=wait)
                if not responses:
                    if wait >= 0.2 and time.monotonic() - started < wait * 0.5:
                        dead = True  # readable but nothing to read: EOF
                        break
                    continue
                for resp in responses:
                    if len(resp) >= 2 and resp[1] in (b"EXISTS", b"RECENT"):
                        new_mail = True
                    elif resp and resp[0] == b"BYE":
                        dead = True
                if new_mail or dead:
                    break
        except BaseException:
            self.idling.clear()
            self.disconnect()  # the connection is in an unknown state: the caller reconnects
            raise
        self.idling.clear()
        if dead:
            self.disconnect()
        else:
            client.idle_done()  # fails (and the caller reconnects) on a connection that died silently
        if dead:
            raise ConnectionError("IMAP connection closed during IDLE")
        self.log.debug("IDLE ended (%s)", "new mail" if new_mail else "stop" if stop.is_set() else "re-issue")


def _parse_copyuid(line: bytes | str) -> dict[int, tuple[int, int]]:
    """`COPYUID uidvalidity source-set dest-set` data (RFC 4315) -> source uid -> (uidvalidity, dest uid)."""
    if isinstance(line, bytes):
        line = line.decode("ascii", "replace")
    parts = line.split()
    if len(parts) != 3:
        return {}
    try:
        validity = int(parts[0])
        src, dst = _expand_set(parts[1]), _expand_set(parts[2])
    except ValueError:
        return {}
    if len(src) != len(dst):
        return {}
    return {s: (validity, d) for s, d in zip(src, dst)}


def _expand_set(text: str) -> list[int]:
    out: list[int] = []
    for piece in text.split(","):
        lo, _, hi = piece.partition(":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


def _uid_set(uids: Sequence[int]) -> str:
    """Sorted UIDs as a compact IMAP sequence set (1:3,7)."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


def _chunks(items: Sequence[int], n: int) -> Iterator[list[int]]:
    for i in range(0, len(items), n):
        yield list(items[i:i + n])


def _batches(uids: Sequence[int], sizes: Mapping[int, int], count: int, max_bytes: int) -> Iterator[list[int]]:
    batch: list[int] = []
    size = 0
    for uid in uids:
        s = sizes.get(uid, 0)
        if batch and (len(batch) >= count or size + s > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(uid)
        size += s
    if batch:
        yield batch


# TLS and the lease ---------------------------------------------------------------------------------------------
def connect_tls(a: ImapAccount, timeout: Any) -> IMAPClient:
    """Implicit TLS or STARTTLS, the certificate verified (ca_file or the system's CAs). A certificate that
    is not accepted raises TlsSetupError; network trouble raises as usual (retried)."""
    from imapclient import IMAPClient

    context = a.ssl_context()
    client: IMAPClient | None = None
    try:
        if a.security == "tls":
            return IMAPClient(a.host, port=a.effective_port, ssl=True, ssl_context=context, timeout=timeout)
        client = IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout)
        client.starttls(context)
        return client
    except ssl.SSLCertVerificationError as e:
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
        where = f"{a.host}:{a.effective_port} ({a.security})"
        trust = f"ca_file {a.ca_file}" if a.ca_file else "the system's CAs (set ca_file for a private CA)"
        raise TlsSetupError(f"the certificate of {where} was not accepted: {e.verify_message or e} "
                            f"(verified against {trust})") from e


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


# Service helpers ----------------------------------------------------------------------------------------------
def start_pollers(app: App, stop: threading.Event, *, names: Sequence[str] | None = None) -> list[threading.Thread]:
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


async def run_pollers(app: App, stop: threading.Event, *, names: Sequence[str] | None = None) -> None:
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

    for account in accounts(service.config):
        poller = ImapPoller(service.app, account)

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


def account_status(app: App, account: ImapAccount, *, connect: bool = True) -> dict[str, Any]:
    """`imap status`: who polls the account (its lease: holder, seconds left, generation) and, with
    `connect`, whether this host can log in (TLS verified as the poller does it) and how many messages wait in
    the folder. Writes nothing (no folder is created, no lease taken)."""
    from imapclient import IMAPClient
    from imapclient.imapclient import SocketTimeout

    a = account
    state = Lease(app.sessions, f"imap:{a.name}", app.instance, a.lease_seconds).state()
    out: dict[str, Any] = {"account": a.name, "server": f"{a.user}@{a.host}:{a.effective_port} ({a.security})",
                           "lease": state.describe() if state else "never taken",
                           "holder": state.holder if state and not state.free else "",
                           "generation": state.generation if state else 0}
    if not connect:
        return out
    timeout = SocketTimeout(connect=a.timeout_seconds, read=a.timeout_seconds)
    client: IMAPClient | None = None
    try:
        client = (IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout) if a.security == "none"
                  else connect_tls(a, timeout))
        client.login(a.user, a.secret())
        out["waiting"] = int(client.folder_status(a.folder, [b"MESSAGES"])[b"MESSAGES"])
        out["login"] = "ok"
    except TlsSetupError as e:
        out["login"], out["error"] = "tls", f"TLS: {e}"
    except Exception as e:  # noqa: BLE001 -- reported, not raised: the other accounts are checked too
        out["login"], out["error"] = "failed", f"{type(e).__name__}: {e}"
    finally:
        if client is not None:
            ImapPoller._close(client)
    return out


def poll_accounts(app: App, names: Sequence[str] | None = None) -> list[PollResult]:
    """Drain every configured account once (the CLI and cron)."""
    out = []
    for account in accounts(app.config):
        if names is not None and account.name not in names:
            continue
        out.append(ImapPoller(app, account).poll_once())
    return out


__all__ = ["ImapAccount", "ImapPoller", "PollResult", "TlsSetupError", "account_status", "accounts", "poll_accounts", "install_service", "run_pollers", "start_pollers"]

"""One drain of an account's folder: every message out of it, in batches, durable before it moves.

For every message (UNDELETED, in UID order, in batches of `batch_size`, at most 32 MiB of mail a batch): its
key is looked up in the ledger (a message already stored is only moved, never fetched again); otherwise the
batch is fetched (BODY.PEEK[]), stored in one commit and recorded; only then is the batch moved with one UID
MOVE. Threading follows from the stored mail (gateway.imap.threads): between the batches (the worker prepares
stored mail while the next batch is fetched and stored), and after each pass. Without UIDPLUS and with a
quarantine folder of its own, a batch is threaded before it moves instead (stored, threaded, moved by
outcome)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from gateway.db import StoreUnavailable, is_unavailable
from gateway.envelope import Envelope
from gateway.imap.account import Deferred, ImapAccount, PollResult, Stopped
from gateway.imap.ledger import Ledger
from gateway.imap.mailbox import Mailbox
from gateway.imap.threads import StoredThreads

if TYPE_CHECKING:
    from gateway.host import ImapHost
    from gateway.intake import Intake
    from gateway.lease import Lease
    from gateway.models import ImapSeen

MAX_BATCH_BYTES = 32 * 1024 * 1024  # a batch's fetch stops growing at this many bytes (one big mail alone)

BeforeMove = Callable[[list[int]], None]


class Drain:
    """The drain of one account (see the module docstring). before_move (an option): called with a batch's
    UIDs after its commit and record, right before its move (a fault point: raising there is a crash between
    the commit and the move). thread_after_move: None threads after the move where the server allows it
    (UIDPLUS, see `decoupled`), True/False force one order."""

    def __init__(self, app: ImapHost, account: ImapAccount, mailbox: Mailbox, ledger: Ledger, lease: Lease,
                 intake: Intake, threads: StoredThreads, log: logging.LoggerAdapter[logging.Logger], *,
                 before_move: BeforeMove | None = None, thread_after_move: bool | None = None) -> None:
        self.app, self.account, self.mailbox, self.ledger, self.lease = app, account, mailbox, ledger, lease
        self.intake, self.threads, self.log = intake, threads, log
        self.before_move = before_move
        self.thread_after_move = thread_after_move
        self.max_size = int(app.config.get("limits", "max_message_size"))
        self.stop: threading.Event | None = None  # the service loop's: a drain stops between batches
        self.tenure: int | None = None  # the lease generation the last drain ran under
        self.threading = False  # this drain threads between its batches (see _keep_up)

    @property
    def decoupled(self) -> bool:
        """Store + move first, thread after the move (the fast path). Needs the moved message's new UID
        (UIDPLUS COPYUID) only when a quarantined mail must be refiled from processed_folder to
        quarantine_folder; without UIDPLUS the poller threads before it moves (the slow path)."""
        if self.thread_after_move is not None:
            return self.thread_after_move
        return not self.account.needs_refile or self.mailbox.has_uidplus

    def stopping(self) -> bool:
        """Stop requested, or the lease on this mailbox was lost (another instance polls it now)."""
        if self.stop is not None and self.stop.is_set():
            return True
        if not self.lease.ensure():
            self.log.warning("lost the lease on this mailbox (%s): stopping this drain", self.lease.seen())
            return True
        return False

    # One drain ----------------------------------------------------------------------------------------------
    def run(self, *, thread: bool = True) -> PollResult:
        """Take every message out of the folder, in batches, until it is empty (or the store is down); then
        (thread=True) thread what was stored and file the quarantined mail."""
        total = PollResult(self.account.name)
        if self.app.disk is not None and self.app.disk.low():
            total.paused = True  # the data directory is nearly full: the mail stays on the server for now
            return total
        if not self._own_lease(total):
            return total
        self.threads.new_drain()
        # a ThreadAhead threads between the batches: the worker prepares stored mail while the next batch is
        # fetched and stored (see _keep_up); else the stored mail is threaded after each pass
        self.threading = thread and self.decoupled and self.threads.ahead
        try:
            self._passes(total, thread)
        finally:
            self.threading = False
            self.threads.drop()
        if total.deferred:
            self.log.warning("database unavailable: %d message(s) left in %r for later", total.deferred,
                             self.account.folder)
        elif total.fetched or total.known or total.oversize or total.threaded:
            self.log.info("drained %r: %s", self.account.folder, total.as_dict())
        return total

    def _passes(self, total: PollResult, thread: bool) -> None:
        """Passes over the folder until it is empty (or the store is down, or a stop); then the threading."""
        tried: set[int] = set()
        uidvalidity: int | None = None
        interleaved = self.threading
        while True:
            validity = self.mailbox.select()
            if validity != uidvalidity:
                if uidvalidity is not None:
                    self.log.warning("UIDVALIDITY of %r changed (%s -> %s)", self.account.folder, uidvalidity,
                                     validity)
                uidvalidity, tried = validity, set()
            total.uidvalidity = uidvalidity
            uids = sorted(set(self.mailbox.undeleted()) - tried)
            if not uids:
                break
            tried.update(uids)
            total.found += len(uids)
            try:
                self._drain_uids(uidvalidity, uids, total)
            except (Deferred, Stopped):
                break
            finally:
                thread = thread and not (interleaved and not self.threading)  # threading stopped early (_keep_up)
            if thread and self.decoupled and not self.threads.thread_stored(total):
                # threaded this pass's mail before looking again (a steady stream cannot starve threading);
                # the store is down or we are stopping: the next drain threads the rest
                thread = self.threading = False
            # new mail may have arrived meanwhile: look again (messages tried in this drain are not retried)
        if thread and self.decoupled and not total.deferred and not self.stopping():
            self.threads.thread_stored(total)  # mail stored by an earlier drain that did not get to thread it
        elif interleaved and not self.threading:
            # threading stopped between two batches and the drain went on storing: all that waits is postponed
            total.postponed = self.threads.unthreaded()

    def _keep_up(self, result: PollResult) -> None:
        """Between two batches of a drain that threads (`threading`): thread what is stored so far but its last
        batch, which the worker prepares while the next batch is fetched and stored (StoredThreads.thread_stored
        keep_up), so that threading goes on beside the drain instead of after it. When threading stops early
        (store unavailable, stop requested), this drain threads no more."""
        try:
            if self.threads.thread_stored(result, keep_up=True):
                return
        except Exception as e:
            if not is_unavailable(e):
                raise
            self.log.warning("database unavailable while threading (%s); the rest is threaded later", e)
        self.threading = False

    def _own_lease(self, result: PollResult) -> bool:
        """Hold (take or renew) the mailbox's lease before draining. False: another instance holds it
        (`result.standby` says who), or the database is down (`result.deferred`: the mail stays)."""
        try:
            held = self.lease.claim() if self.lease.generation is None else self.lease.ensure()
        except Exception as e:
            if not is_unavailable(e):
                raise
            self.mailbox.select()
            result.deferred = len(self.mailbox.undeleted())
            self.log.warning("database unavailable (%s): %d message(s) left for later", e, result.deferred)
            return False
        if not held:
            result.standby = self.lease.seen()
            return False
        if self.lease.generation != self.tenure:  # a new tenure: thread what an earlier holder did not
            self.tenure, self.threads.floor = self.lease.generation, 0
            self.log.info("polling this mailbox (lease generation %s, %.0f s)", self.lease.generation,
                          self.lease.ttl)
        return True

    def _still_ours(self) -> None:
        """Right before a store: a fetch that outlasted the lease (another instance took over and fetches the
        same messages) stores nothing."""
        if not self.lease.ensure():
            raise Stopped()

    def _drain_uids(self, uidvalidity: int, uids: list[int], result: PollResult) -> None:
        left_before = result.moved + result.quarantined
        try:
            for chunk in _chunks(uids, max(self.account.batch_size, 1) * 4):
                if self.stopping():
                    raise Stopped()
                self._drain_chunk(uidvalidity, chunk, result)
        except Deferred:
            # whatever was not moved stays in the folder for the next drain
            result.deferred += len(uids) - (result.moved + result.quarantined - left_before)
            raise

    def _drain_chunk(self, uidvalidity: int, chunk: list[int], result: PollResult) -> None:
        a = self.account
        try:
            known = self.ledger.known(uidvalidity, chunk)
        except Exception as e:
            if is_unavailable(e):
                raise Deferred() from e
            raise
        # sizes first: batches stay bounded in bytes, and oversize mail is never fetched
        sizes = self.mailbox.sizes(chunk)
        sorted_ = self._sort(chunk, sizes, known, result)
        todo, to_processed, to_quarantine, to_file = sorted_
        self._move_batch(uidvalidity, to_processed, to_quarantine, result)
        if to_file:
            self._store_and_file(uidvalidity, [], to_file, result)
        for batch in _batches(todo, sizes, max(a.batch_size, 1), MAX_BATCH_BYTES):
            if self.stopping():
                raise Stopped()
            if self.decoupled:
                self._store_and_file(uidvalidity, batch, {}, result)
                if self.threading:
                    self._keep_up(result)
            else:
                self._thread_before_move(uidvalidity, batch, known, result)

    def _sort(self, chunk: list[int], sizes: Mapping[int, int], known: Mapping[int, ImapSeen], result: PollResult
              ) -> tuple[list[int], list[int], list[int], dict[int, int]]:
        """(to fetch, to move to processed_folder, to move to quarantine_folder, stored before and not
        threaded: uid -> mail id, moved with the next batch)."""
        todo: list[int] = []
        to_processed: list[int] = []
        to_quarantine: list[int] = []
        to_file: dict[int, int] = {}
        decoupled = self.decoupled
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
                                 uid, sizes[uid], self.account.quarantine_folder)
                result.oversize += 1
                to_quarantine.append(uid)
            else:
                todo.append(uid)
        return todo, to_processed, to_quarantine, to_file

    # The fast path: store, move, thread later ---------------------------------------------------------------
    def _store_and_file(self, uidvalidity: int, batch: list[int], stored: dict[int, int],
                        result: PollResult) -> None:
        """Fetch a batch, store its mails in one transaction (one commit), record their keys (state
        `stored`), and only then move the whole batch to processed_folder with one UID MOVE of the UID set.
        `stored` (uid -> mail id) are messages committed earlier: moved with the batch, not fetched again."""
        mail_ids: dict[int, int] = dict(stored)
        fresh = self.mailbox.bodies(batch)
        result.fetched += len(fresh)
        if fresh:
            self._still_ours()
            ids = self._store_fresh(uidvalidity, fresh, result)
            new = {uid: mail_id for (uid, _), mail_id in zip(fresh, ids, strict=True)}
            del fresh
            try:
                self.ledger.record(uidvalidity, [], sorted(new.items()))
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
        dest = self.mailbox.move(uids, self.account.processed_folder, track=self.account.needs_refile)
        result.moved += len(uids)
        self.threads.moved_here.update(mail_ids.values())
        self.ledger.mark_filed(uidvalidity, mail_ids, dest)

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

    def _envelope(self, uidvalidity: int, uid: int) -> Envelope:
        a = self.account
        return Envelope(mail_from=None, rcpt_tos=(a.address.lower(),) if a.address else (), source="imap",
                        source_ref=a.ref(a.folder, uidvalidity, uid))

    # The slow path: store, thread, move by outcome ----------------------------------------------------------
    def _thread_before_move(self, uidvalidity: int, batch: list[int], known: Mapping[int, ImapSeen],
                            result: PollResult) -> None:
        """Fetch a batch, store the new mails in one transaction (one commit for the batch), thread them,
        record their keys, then move them by outcome."""
        mail_ids: dict[int, int] = {}  # uid -> stored mail id, in UID order
        fresh: list[tuple[int, bytes]] = []
        for uid, raw in self.mailbox.bodies(batch):
            result.fetched += 1
            row = known.get(uid)
            if row is not None and row.mail_id is not None:
                mail_ids[uid] = row.mail_id  # stored before, threading did not finish
            else:
                fresh.append((uid, raw))
                mail_ids[uid] = 0
        if fresh:
            self._still_ours()
            ids = self._store_fresh(uidvalidity, fresh, result)
            mail_ids.update((uid, mail_id) for (uid, _), mail_id in zip(fresh, ids, strict=True))
        del fresh
        done, pending, unavailable, stopped = self.threads.thread_batch(mail_ids, result, self.stop)
        # remember what was stored; if that fails it only costs a refetch (the core dedupes)
        pending = [(u, m) for u, m in pending if not (known.get(u) is not None and known[u].mail_id == m)]
        try:
            self.ledger.record(uidvalidity, done, pending)
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

    def _move_batch(self, uidvalidity: int, to_processed: list[int], to_quarantine: list[int],
                    result: PollResult) -> None:
        a = self.account
        moved: list[tuple[int, str]] = []
        if to_processed:
            self.mailbox.move(to_processed, a.processed_folder)
            result.moved += len(to_processed)
            moved += [(u, a.processed_folder) for u in to_processed]
        if to_quarantine:
            self.mailbox.move(to_quarantine, a.quarantine_folder or a.processed_folder)
            result.quarantined += len(to_quarantine)
            moved += [(u, a.quarantine_folder or a.processed_folder) for u in to_quarantine]
        self.ledger.mark_moved(uidvalidity, moved)


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


__all__ = ["Drain", "MAX_BATCH_BYTES"]

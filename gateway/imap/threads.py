"""Threading the mail an IMAP account stored, through the intake engine (gateway.engine, as serve threads SMTP
mail): in the order it was stored, in batches of THREAD_BATCH, the outcomes recorded on its keys
(gateway.imap.ledger), and a quarantined mail moved on from processed_folder to quarantine_folder."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gateway.db import StoreUnavailable, is_unavailable
from gateway.engine import ThreadAhead
from gateway.imap.account import ImapAccount, PollResult
from gateway.imap.ledger import Ledger
from gateway.imap.mailbox import Mailbox

if TYPE_CHECKING:
    from gateway.intake import Result

THREAD_CHUNK = 100  # mails threaded between two records of their outcomes
THREAD_BATCH = 16  # stored mails threaded in one write transaction (as serve threads SMTP mail)

ThreadBatch = Callable[[Sequence[int]], "list[Result]"]


class StoredThreads:
    """Threads stored mails through the intake engine, in batches. thread(mail_ids) -> results: one batch of
    stored mails (default `Engine.thread`: prepared by the app's worker within limits.mail_cpu_seconds, then
    one write transaction); a mail it leaves out (another thread of the engine has it) is threaded later. A
    `ThreadAhead` (the default) is told the batch that follows each one: the worker prepares it while this
    one's write transactions run.
    stopping() says to stop between batches (stop requested, lease lost). A batch that fails for another
    reason than the store is threaded again one mail at a time: only the mail that fails alone is left (logged,
    counted as failed, tried again on the next drain)."""

    def __init__(self, account: ImapAccount, mailbox: Mailbox, ledger: Ledger,
                 log: logging.LoggerAdapter[logging.Logger], thread: ThreadBatch, stopping: Callable[[], bool], *,
                 batch: int = THREAD_BATCH) -> None:
        self.account, self.mailbox, self.ledger, self.log = account, mailbox, ledger, log
        self.thread = thread
        self.stopping = stopping
        self.batch = max(1, batch)
        self.moved_here: set[int] = set()  # mail ids moved to processed_folder in the current drain
        self.failed_here: set[int] = set()  # mail ids whose threading failed in the current drain (not retried)
        self.floor = 0  # mail ids up to here are threaded and recorded (see thread_stored)

    def new_drain(self) -> None:
        self.moved_here = set()
        self.failed_here = set()

    @property
    def ahead(self) -> bool:
        """Can a batch be handed to the worker ahead (a ThreadAhead threads)?"""
        return isinstance(self.thread, ThreadAhead)

    def thread_stored(self, result: PollResult, *, keep_up: bool = False) -> bool:
        """Thread every mail this account stored and has not seen threaded yet (in the order they were
        stored, in batches), record the outcomes, and move the quarantined ones from processed_folder to
        quarantine_folder. Returns False when it stopped early (store unavailable, stop requested): the rest
        waits for the next drain (or the service's sweep; threading is idempotent).

        keep_up (a drain, between its batches; a ThreadAhead only): the last batch is not threaded but handed
        to the worker, which prepares it while the drain fetches and stores the next batch; the next call
        threads it first (a call that does not, or an error, gives it up: `drop`)."""
        kept = False
        complete = True
        last = self.floor  # every mail id up to here is threaded and recorded
        low: int | None = None  # the lowest mail id left unthreaded (or unrecorded) by this call
        rows = self.ledger.unthreaded(last, THREAD_CHUNK)
        try:
            while complete and rows:
                last = rows[-1].mail_id
                # the next chunk, read first: its first batch is prepared while this chunk's last one is written
                upcoming = self.ledger.unthreaded(last, THREAD_CHUNK)
                done, left, complete = self._thread_rows(rows, result, upcoming, keep_up and not upcoming)
                if not self._settle(done, result) and done:
                    left.append(done[0][0].mail_id)
                if left:
                    low = min(left) if low is None else min(low, *left)
                rows = upcoming
            kept = keep_up and complete
        finally:
            if not kept:
                self.drop()
        # later calls start after what is settled (the mail_id index), not at the start of the account's history
        self.floor = max(self.floor, (low - 1) if low is not None else last)
        if not complete:
            result.postponed += self.unthreaded()
        return complete

    def unthreaded(self) -> int:
        """Stored mails of this account not threaded (but those that failed in this drain): postponed. The
        database down: 1 (a count for the report only)."""
        try:
            return self.ledger.count_unthreaded(self.failed_here)
        except Exception as e:  # noqa: BLE001 -- a count for the report only
            if not is_unavailable(e):
                raise
            return 1

    def drop(self) -> None:
        """Give up a batch handed to the worker ahead (ThreadAhead), if any."""
        if isinstance(self.thread, ThreadAhead):
            self.thread.drop()

    def _batches(self, todo: list[Any]) -> list[list[Any]]:
        """Rows in batches; a batch handed to the worker ahead (ThreadAhead) comes first as it was."""
        staged = list(self.thread.staged_for) if isinstance(self.thread, ThreadAhead) else []
        first = len(staged) if staged and [r.mail_id for r in todo[:len(staged)]] == staged else 0
        return [todo[:first]] * bool(first) + [todo[i:i + self.batch] for i in range(first, len(todo), self.batch)]

    def _thread_rows(self, rows: list[Any], result: PollResult, upcoming: list[Any], keep_last: bool = False
                     ) -> tuple[list[tuple[Any, str]], list[int], bool]:
        """(threaded rows with their outcomes, mail ids left unthreaded, complete). upcoming: the rows after
        these (the first batch of them is handed to the worker while the last batch of these is written).
        keep_last: the last batch is handed to the worker and left (see thread_stored)."""
        done: list[tuple[Any, str]] = []
        left = [r.mail_id for r in rows if r.mail_id in self.failed_here]
        todo = [r for r in rows if r.mail_id not in self.failed_here]
        later = [r.mail_id for r in upcoming if r.mail_id not in self.failed_here][:self.batch]
        batches = self._batches(todo)
        for i, batch in enumerate(batches):
            if self.stopping():
                left += [r.mail_id for b in batches[i:] for r in b]
                return done, left, False
            then = [r.mail_id for r in batches[i + 1]] if i + 1 < len(batches) else later
            if keep_last and i + 1 == len(batches) and isinstance(self.thread, ThreadAhead):
                self.thread.stage([r.mail_id for r in batch])
                left += [r.mail_id for r in batch]
                break
            try:
                results = self._thread_ids([r.mail_id for r in batch], result, then)
            except StoreUnavailable as e:
                self.log.warning("database unavailable while threading (%s); the rest is threaded later", e)
                left += [r.mail_id for b in batches[i:] for r in b]
                return done, left, False
            for row in batch:
                res = results.get(row.mail_id)
                if res is None or res.outcome == "received":  # left out, or waits for its original
                    left.append(row.mail_id)
                    continue
                result.threaded += 1
                result.outcomes[res.outcome] += 1
                done.append((row, res.outcome))
        return done, left, True

    def _thread_ids(self, ids: list[int], result: PollResult, then: list[int] | None = None) -> dict[int, Result]:
        """Thread a batch: mail id -> result; `then`: the batch that follows (a ThreadAhead prepares it
        meanwhile). Raises StoreUnavailable (the database is down: nothing of this batch is decided). A batch
        that fails otherwise is threaded again one mail at a time; a mail that fails alone is left out (logged,
        counted in `result.failed`, not tried again in this drain)."""
        try:
            if then and isinstance(self.thread, ThreadAhead):
                return {r.mail_id: r for r in self.thread(ids, then=then)}
            return {r.mail_id: r for r in self.thread(ids)}
        except StoreUnavailable:
            raise
        except Exception as e:  # noqa: BLE001 -- a bug, or a mail that breaks the pipeline: find which one
            if is_unavailable(e):
                raise StoreUnavailable(str(e)) from e
            if len(ids) > 1:
                self.log.warning("%d mails from %s: threading failed (%s: %s); one at a time now", len(ids),
                                 ids[0], type(e).__name__, e)
                out: dict[int, Result] = {}
                for mail_id in ids:
                    out.update(self._thread_ids([mail_id], result))
                return out
            self.log.exception("mail %s: could not be threaded; tried again on the next drain", ids[0])
            result.failed += 1
            self.failed_here.add(ids[0])
            return {}

    def _settle(self, done: list[tuple[Any, str]], result: PollResult) -> bool:
        """Record the outcomes of threaded mails; refile the quarantined ones that sit in processed_folder.
        Returns False when the outcomes could not be recorded (the database is unavailable)."""
        if not done:
            return True
        a = self.account
        quarantined = {row.mail_id for row, outcome in done if outcome == "quarantined"}
        refile = self.ledger.filed_keys(quarantined) if quarantined and a.needs_refile else {}
        refiled = self.refile(refile) if refile else set()
        for mail_id in refiled:
            result.quarantined += 1
            if mail_id in self.moved_here:
                result.moved -= 1
        for mail_id in {row.mail_id for row, o in done if o == "quarantined" and row.state == "moved"
                        and row.moved_to == a.processed_folder and a.needs_refile} - set(refile):
            self.log.warning("mail %s was quarantined but its place in %r is unknown: it stays there", mail_id,
                             a.processed_folder)
        return self.ledger.record_outcomes({row.mail_id: outcome for row, outcome in done}, refiled)

    def thread_batch(self, mail_ids: dict[int, int], result: PollResult, stop: threading.Event | None
                     ) -> tuple[list[tuple[int, int, str]], list[tuple[int, int]], BaseException | None, bool]:
        """The slow path (threaded before the move): thread a stored batch (uid -> mail id, in UID order), in
        batches. Returns (done: (uid, mail id, outcome), pending: (uid, mail id) stored and not threaded, the
        store's error that stopped it or None, stopped by `stop`). A mail whose threading failed otherwise is
        pending (logged, counted as failed) and the rest goes on."""
        done: list[tuple[int, int, str]] = []
        pending: list[tuple[int, int]] = []
        unavailable: BaseException | None = None
        stopped = False
        items = list(mail_ids.items())
        for i in range(0, len(items), self.batch):
            batch = items[i:i + self.batch]
            if unavailable is not None or stopped or (stop is not None and stop.is_set()):
                stopped = unavailable is None
                pending += batch  # stays in the folder for the next drain
                continue
            try:
                results = self._thread_ids([m for _, m in batch], result)
            except StoreUnavailable as e:
                unavailable = e
                pending += batch
                continue
            for uid, mail_id in batch:
                res = results.get(mail_id)
                if res is None or res.outcome == "received":  # left out, or waits for its original
                    pending.append((uid, mail_id))
                    continue
                result.outcomes[res.outcome] += 1
                done.append((uid, mail_id, res.outcome))
        return done, pending, unavailable, stopped

    def refile(self, keys: dict[int, tuple[int, int]]) -> set[int]:
        """Move quarantined mails (mail id -> key in processed_folder) on to quarantine_folder."""
        return self.mailbox.refile(keys, self.account.processed_folder, self.account.quarantine_folder)


__all__ = ["StoredThreads", "THREAD_BATCH", "THREAD_CHUNK", "ThreadBatch"]

"""What is durable about an account's messages (table imap_seen): which UIDs are stored and as which mail,
where a message was moved, and the outcome of its mail once threaded. Keys are (account, folder, UIDVALIDITY,
UID); a message moved to processed_folder gets a key there too (state `filed`, from the server's COPYUID) so
that a mail quarantined later can be refiled. States: `stored` (committed, still in the folder), `processed`
(threaded, still in the folder), `moved` (left the folder; `moved_to` says where), `filed` (its copy in
processed_folder, not threaded yet). Who may poll the mailbox is the lease's business (gateway.lease)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, tuple_

from gateway.db import is_unavailable, retry_on_conflict, transaction
from gateway.imap.account import ImapAccount
from gateway.models import ImapSeen

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from gateway.clock import Clock


class Ledger:
    def __init__(self, sessions: sessionmaker[Session], clock: Clock, account: ImapAccount,
                 log: logging.LoggerAdapter[logging.Logger]) -> None:
        self.sessions = sessions
        self.clock = clock
        self.account = account
        self.log = log

    # Reading ------------------------------------------------------------------------------------------------
    def known(self, uidvalidity: int, uids: Sequence[int]) -> dict[int, ImapSeen]:
        """The keys of these UIDs of the polled folder recorded before (detached rows)."""
        a = self.account
        with self.sessions() as s:
            rows = s.scalars(select(ImapSeen).where(ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                                                    ImapSeen.uidvalidity == uidvalidity,
                                                    ImapSeen.uid.in_(list(uids))))
            return {r.uid: r for r in rows}

    def unthreaded(self, after: int, limit: int) -> list[Any]:
        """Stored mails of the polled folder without a recorded outcome, mail id > after, in mail id order:
        rows (id, mail_id, state, moved_to)."""
        a = self.account
        with self.sessions() as s:
            return list(s.execute(select(ImapSeen.id, ImapSeen.mail_id, ImapSeen.state, ImapSeen.moved_to)
                                  .where(ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                                         ImapSeen.outcome.is_(None), ImapSeen.mail_id.is_not(None),
                                         ImapSeen.mail_id > after)
                                  .order_by(ImapSeen.mail_id).limit(limit)))

    def count_unthreaded(self, excluding: Iterable[int]) -> int:
        a = self.account
        with self.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(ImapSeen).where(
                ImapSeen.account == a.name, ImapSeen.folder == a.folder, ImapSeen.outcome.is_(None),
                ImapSeen.mail_id.is_not(None), ImapSeen.mail_id.not_in(list(excluding) or [0]))) or 0)

    def filed_keys(self, mail_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """mail id -> (UIDVALIDITY, UID) of its copy in processed_folder, where recorded (state `filed`)."""
        a = self.account
        with self.sessions() as s:
            return {r.mail_id: (r.uidvalidity, r.uid) for r in s.execute(
                select(ImapSeen.mail_id, ImapSeen.uidvalidity, ImapSeen.uid).where(
                    ImapSeen.account == a.name, ImapSeen.folder == a.processed_folder,
                    ImapSeen.state == "filed", ImapSeen.mail_id.in_(list(mail_ids))))}

    # Writing ------------------------------------------------------------------------------------------------
    def record(self, uidvalidity: int, done: Sequence[tuple[int, int, str]], pending: Sequence[tuple[int, int]]
               ) -> None:
        """Keys of the polled folder: (uid, mail id, outcome) threaded (`processed`), (uid, mail id) stored
        and not threaded (`stored`). Database errors propagate."""
        if not done and not pending:
            return
        a = self.account
        now = self.clock()
        rows: list[tuple[int, int, str, str | None]] = [(u, m, "processed", o) for u, m, o in done]
        rows += [(u, m, "stored", None) for u, m in pending]

        def write() -> None:
            with transaction(self.sessions) as s:
                existing = {r.uid: r for r in s.scalars(select(ImapSeen).where(
                    ImapSeen.account == a.name, ImapSeen.folder == a.folder, ImapSeen.uidvalidity == uidvalidity,
                    ImapSeen.uid.in_([r[0] for r in rows])))}
                for uid, mail_id, state, outcome in rows:
                    r = existing.get(uid)
                    if r is None:
                        s.add(ImapSeen(account=a.name, folder=a.folder, uidvalidity=uidvalidity, uid=uid,
                                       mail_id=mail_id, state=state, outcome=outcome, created_at=now,
                                       updated_at=now))
                    else:
                        r.mail_id, r.state, r.outcome, r.updated_at = mail_id, state, outcome, now

        retry_on_conflict(write)

    def mark_moved(self, uidvalidity: int, moved: Iterable[tuple[int, str]]) -> None:
        """(uid, folder) moved out of the polled folder. Bookkeeping only: a database error is logged."""
        moved = list(moved)
        if not moved:
            return
        a = self.account
        now = self.clock()
        by_folder: dict[str, list[int]] = {}
        for uid, folder in moved:
            by_folder.setdefault(folder, []).append(uid)
        try:
            with transaction(self.sessions) as s:
                for folder, uids in by_folder.items():
                    for r in s.scalars(select(ImapSeen).where(
                            ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                            ImapSeen.uidvalidity == uidvalidity, ImapSeen.uid.in_(uids))):
                        r.state, r.moved_to, r.updated_at = "moved", folder, now
        except Exception as e:  # noqa: BLE001 -- bookkeeping only: the messages have left the folder
            if not is_unavailable(e):
                raise
            self.log.warning("could not mark %d message(s) as moved: %s", len(moved), e)

    def mark_filed(self, uidvalidity: int, mail_ids: Mapping[int, int], dest: Mapping[int, tuple[int, int]]
                   ) -> None:
        """After the move to processed_folder: the source keys are `moved`; each message's new key there (when
        the server told it, UIDPLUS) is recorded as `filed`, so that a quarantined mail can be refiled later."""
        a = self.account
        now = self.clock()
        to = a.processed_folder or None

        def write() -> None:
            with transaction(self.sessions) as s:
                for r in s.scalars(select(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.folder == a.folder,
                        ImapSeen.uidvalidity == uidvalidity, ImapSeen.uid.in_(list(mail_ids)))):
                    r.state, r.moved_to, r.updated_at = "moved", to, now
                if dest:
                    self._write_filed(s, mail_ids, dest)

        try:
            retry_on_conflict(write)
        except Exception as e:  # noqa: BLE001 -- the messages left the folder; they are stored and get threaded
            if not is_unavailable(e):
                raise
            self.log.warning("could not mark %d message(s) as moved: %s", len(mail_ids), e)

    def _write_filed(self, s: Session, mail_ids: Mapping[int, int], dest: Mapping[int, tuple[int, int]]) -> None:
        a = self.account
        now = self.clock()
        old = {(r.uidvalidity, r.uid): r for r in s.scalars(select(ImapSeen).where(
            ImapSeen.account == a.name, ImapSeen.folder == a.processed_folder,
            tuple_(ImapSeen.uidvalidity, ImapSeen.uid).in_(list(dest.values()))))}
        for uid, key in dest.items():
            r = old.get(key)
            if r is None:
                s.add(ImapSeen(account=a.name, folder=a.processed_folder, uidvalidity=key[0], uid=key[1],
                               mail_id=mail_ids[uid], state="filed", outcome=None, created_at=now, updated_at=now))
            else:  # a stale row (the folder was recreated with the same UIDVALIDITY)
                r.mail_id, r.state, r.outcome, r.moved_to, r.updated_at = mail_ids[uid], "filed", None, None, now

    def record_outcomes(self, outcome_of: Mapping[int, str], refiled: set[int]) -> bool:
        """The outcomes of threaded mails (mail id -> outcome) on their keys in the polled folder and in
        processed_folder; `refiled` were moved on to quarantine_folder. False: the database is unavailable
        (threading is idempotent: it is done again)."""
        a = self.account
        now = self.clock()

        def write() -> None:
            with transaction(self.sessions) as s:
                for r in s.scalars(select(ImapSeen).where(
                        ImapSeen.account == a.name, ImapSeen.mail_id.in_(list(outcome_of)),
                        ImapSeen.folder.in_([a.folder, a.processed_folder]))):
                    if r.mail_id is None:
                        continue
                    if r.folder == a.folder and r.outcome is None:
                        # state `stored`: still in the folder (not moved yet); the drain moves it by its outcome
                        r.outcome, r.updated_at = outcome_of[r.mail_id], now
                        if r.mail_id in refiled:
                            r.moved_to = a.quarantine_folder
                    elif r.folder == a.processed_folder and r.state == "filed":
                        r.outcome, r.updated_at = outcome_of[r.mail_id], now
                        r.state = "processed"
                        if r.mail_id in refiled:
                            r.state, r.moved_to = "moved", a.quarantine_folder

        try:
            retry_on_conflict(write)
        except Exception as e:  # noqa: BLE001 -- bookkeeping: threading is idempotent, it is done again
            if not is_unavailable(e):
                raise
            self.log.warning("could not record the outcome of %d mail(s): %s", len(outcome_of), e)
            return False
        return True


__all__ = ["Ledger"]

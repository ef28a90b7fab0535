"""What is remembered for one write transaction, and when it is forgotten (part of the store seam, gateway.store).

A memo holds values only this transaction can change: on SQLite, where every write transaction holds the write
lock (BEGIN IMMEDIATE, gateway.db), no other writer changes anything meanwhile, so "no contact has this address"
stays true until this transaction writes one. On PostgreSQL another instance may write at any time:
`write_locked_memo` is None there and the database is asked every time.

Every memo is dropped on every rollback (a savepoint's included: it may undo what the memo remembers; the hook
is installed by gateway.store.sql.session_factory) and at the end of the transaction. Whoever writes what a memo
remembers forgets it through this module (`drop_memo`); the keys and who forgets each are listed below, in one
place.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

# The memos, by key. Filled by / forgotten by:
ABSENT_CLAIMS = "absent-claims"          # dedupe claims (sha256, Message-ID) no mail holds: store.prefetch /
#                                          SqlStore.claim
ABSENT_CONTACTS = "absent-contacts"      # addresses no contact has: store.prefetch / a contact registered
KNOWN_MESSAGE_IDS = "known-message-ids"  # Message-ID -> ids of the tickets that know it: store.prefetch / a row
#                                          written for it, a merge (gateway.workflow moves them)
ABSENT_NUMBERS = "absent-ticket-numbers"  # ticket numbers that exist nowhere: store.prefetch / a number taken
NO_ORGANISATION = "no-organisation"      # domains of no organisation: Directory lookups / an organisation or
#                                          domain added or removed
STAFF = "staff"                          # the staff contacts (gateway.outbound.notify) / a contact's role changed
SENT_PER_RECIPIENT = "sent-per-recipient"  # rate-cap counts (gateway.outbound.notify) / kept up to date by it,
#                                            dropped when a notification round fails
MADE_BY = "made-by"                      # sender -> (since, until, when each of their tickets and comments in
#                                          that span arrived): store.prefetch / a mail row's outcome written
#                                          (gateway.store.sql.made_written)
MAIL_IDS = "mail-ids"                    # the last mail id handed out ahead (gateway.store.sql.preallocated_mail_id)

_MEMO = "tg.memo"
_SQLITE = "tg.sqlite"


def write_locked_memo(session: Session, key: str) -> dict[Any, Any] | None:
    """The memo `key` of the current transaction, or None where values cannot be remembered (not SQLite, or no
    transaction). Whoever writes what a memo remembers updates or drops it (`drop_memo`)."""
    sqlite = session.info.get(_SQLITE)
    if sqlite is None:  # a session keeps its engine: asked once (get_bind costs more than the rest of this)
        sqlite = session.info[_SQLITE] = session.get_bind().dialect.name == "sqlite"
    if not sqlite or not session.in_transaction():
        return None
    root = session.get_transaction()
    held: tuple[Any, dict[str, dict[Any, Any]]] | None = session.info.get(_MEMO)
    if held is None or held[0] is not root:
        held = session.info[_MEMO] = (root, {})
    return held[1].setdefault(key, {})


def drop_memo(session: Session, key: str) -> None:
    held = session.info.get(_MEMO)
    if held is not None:
        held[1].pop(key, None)


def drop_all(session: Session) -> None:
    """Everything remembered (a rollback: what was remembered may be undone)."""
    session.info.pop(_MEMO, None)


# What a session found, by a unique key: rows that exist (a row another writer adds meanwhile is found by the
# next query). A hit is used only while the object is still in the session: one created in a savepoint that was
# rolled back has left it and is looked up again. A remembered row is the object the session's identity map
# would return for the same query anyway, so this saves the round trip and nothing else. Kept for the session
# (not only the transaction: the objects stay valid, expire_on_commit is off); whoever deletes such a row or
# changes its key forgets the map (`forget_found`).
CONTACTS_FOUND = "tg.contacts"   # address -> Contact
TICKETS_FOUND = "tg.tickets"     # number -> Ticket
DOMAINS_FOUND = "tg.domains"     # domain -> Organisation


def found_rows(session: Session, key: str) -> dict[Any, Any]:
    return session.info.setdefault(key, {})


def found_row(session: Session, key: str, value: Any) -> Any:
    obj = found_rows(session, key).get(value)
    if obj is not None and obj in session:
        return obj
    return None


def forget_found(session: Session, key: str) -> None:
    session.info.pop(key, None)

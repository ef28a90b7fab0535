"""Lookups for the next mails of a batch import, made for all of them at once.

A multi-mail import (`ingest PATH`) knows its next mails before it runs them: the parse-ahead worker has parsed
them. The handlers' lookups for those mails (is this mail a duplicate, who is the sender, which tickets do its
References and subject tags name) are then made in a few queries for a chunk of mails instead of a few queries
for each mail:

- what is found is loaded into the session or remembered as the handlers' own lookups would load it (contacts and tickets,
  remembered by address and number: see gateway.tickets);
- what is found nowhere is remembered as absent, only where the transaction holds the write lock (SQLite,
  gateway.db.write_locked_memo): no other writer can add it meanwhile; whoever writes such a key in this
  transaction removes it (a contact registered, a ticket's Message-ID written, a mail's dedupe claims), and any
  rollback forgets them all. On PostgreSQL each handler still asks for what was not found.
- listeners make their own (notifications: how many mails each sender was sent in the rate-cap window).

Nothing here decides anything: outcomes, traces and rows are the same with or without it (a test runs the same
mails both ways).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gateway.clock import Clock
    from gateway.config import Config
    from gateway.events import Listeners
    from gateway.envelope import Envelope


MAX_PER_MAIL = 200  # addresses or Message-IDs looked up ahead for one mail


def prefetch(session: Session, config: Config, clock: Clock, listeners: Listeners,
             items: Sequence[tuple[Envelope, Any]]) -> None:
    """items: (envelope, gateway.prepare.Prepared or None) of the next mails, in order. A listener with a
    `prefetch(session, sender addresses)` method makes its own lookups for them (notifications: rate caps)."""
    from gateway.handlers.dedupe import msgid_claim_of, preload
    from gateway.handlers.match import tag_pattern
    from gateway.tickets import Directory, Tickets

    claims: list[tuple[str, str | None]] = []
    emails: list[str] = []
    senders: list[str] = []
    message_ids: list[str] = []
    numbers: list[int] = []
    tags = tag_pattern(config.gateway["subject_tag_prefix"])
    for envelope, prep in items:
        p = getattr(prep, "parsed", None)
        if p is None or prep.sha256 is None:
            continue
        claims.append((prep.sha256, msgid_claim_of(p.message_id, p.from_addr, envelope.mail_from)))
        if p.from_addr:
            emails.append(p.from_addr)
            senders.append(p.from_addr)
        # as the handlers ask (gateway.handlers.thread, .match), a bounded number per mail (this is only a cache)
        emails.extend([addr for _, addr in p.cc if addr and addr.count("@") == 1][:MAX_PER_MAIL])
        message_ids.extend(list(dict.fromkeys(p.in_reply_to + list(reversed(p.references))))[:MAX_PER_MAIL])
        numbers.extend(int(m.group(1)) for m in tags.finditer(p.subject))
    if not claims:
        return
    with session.no_autoflush:
        preload(session, claims)
        Directory(session, clock).preload(emails)
        Tickets(session, clock=clock).preload(message_ids, numbers)
        if senders:
            for listener in listeners:
                ahead = getattr(listener, "prefetch", None)
                if ahead is not None:
                    ahead(session, senders)

"""Pure rate-cap decisions (loop guards). The caller counts from the outbox; nothing here touches a store.

Two caps, in the spirit of Znuny's PostmasterMaxEmails and Zammad's loop protection:
* per ticket: at most `max_per_ticket` notification rounds caused by inbound mail in TICKET_WINDOW;
* per recipient: at most `max_per_recipient` mails caused by inbound mail in RECIPIENT_WINDOW.
Mail caused by an operator (CLI/API) is never capped: typing people are not loops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

TICKET_WINDOW = timedelta(minutes=10)
RECIPIENT_WINDOW = timedelta(days=1)
REJECT_NOTICE_WINDOW = timedelta(days=1)

_AUTOMATIC_LOCAL = re.compile(
    r"^(mailer-daemon|mailer_daemon|postmaster|mail-daemon|no[-_.]?reply([-+._].*)?|do[-_.]?not[-_.]?reply|"
    r"dont[-_.]?reply|bounces?([-+._].*)?|auto[-_.]?reply|autoresponder|daemon|listserv|majordomo|"
    r"owner-.*|.*-owner|.*-request|.*-bounces?)$", re.I)


@dataclass(frozen=True)
class Caps:
    max_per_ticket: int
    max_per_recipient: int


def window_start(now: datetime, window: timedelta) -> datetime:
    return now - window


def ticket_round_allowed(rounds_in_window: int, caps: Caps) -> bool:
    """May one more notification round for this ticket be sent? (`rounds_in_window` already sent)"""
    return rounds_in_window < caps.max_per_ticket


def recipient_allowed(mails_in_window: int, caps: Caps) -> bool:
    return mails_in_window < caps.max_per_recipient


def reject_notice_allowed(notices_in_window: int) -> bool:
    """One polite rejection notice per sender per day."""
    return notices_in_window < 1


def is_automatic_address(addr: str) -> bool:
    """mailer-daemon, postmaster, noreply, list and bounce addresses: never sent an automatic answer."""
    local = addr.rpartition("@")[0].split("+", 1)[0]
    return bool(_AUTOMATIC_LOCAL.match(local))


_VALID_ADDR = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                         r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*$")


def is_sendable_address(addr: str) -> bool:
    """A plain addr-spec we are willing to put in an envelope and a header (no quoting, no spaces, no CR/LF)."""
    return bool(addr) and len(addr) <= 254 and bool(_VALID_ADDR.match(addr)) and ".." not in addr

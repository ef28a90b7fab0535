"""A mail to a watcher's signed unsubscribe address (List-Unsubscribe: `support+u42-<mac>@example.com`,
gateway.ourmail) removes that watcher from the ticket and ends as `ignored`: no ticket, no comment, no answer.

The token is the authority (like RFC 8058's one-click URL): it names one ticket and one watcher, so it runs
before sender authentication and before the sender is looked up or registered. A token that names no current
watcher (already removed, or forged) changes nothing and is ignored too.

An import of old mail (`ingest` of files, Maildirs, mboxes: `ctx.historic`) never acts on it: the request was
made when the mail was written, perhaps years ago, and the watcher may have been added again since (by staff, or
by writing to the ticket). Such a mail is recorded as ignored, with the reason, and changes nothing. Live mail
acts on a token of any age, as the one-click link (gateway.api.unsubscribe) does: a watcher who wants to stop
the notifications uses whichever one is at hand.
"""

from __future__ import annotations

from gateway import ourmail
from gateway.outcomes import Ignore
from gateway.pipeline import MailContext

MAX_ADDRESSES = 50  # envelope and To addresses looked at (mail input: bounded)


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    bases = ctx.config.gateway_addresses
    addrs = list(ctx.mail.envelope_to or []) + [a for _, a in p.to]
    for addr in addrs[:MAX_ADDRESSES]:
        token = ourmail.unsubscribe_token_of_address(addr, bases)
        if token is None:
            continue
        if ctx.historic:
            ctx.note(f"unsubscribe: {addr} is an unsubscribe address, but an imported mail is not acted on")
            raise Ignore("unsubscribe: an imported mail is not acted on")
        done = ctx.store.unsubscribe(ourmail.reply_secret(ctx.config), token)
        if done is None:
            ctx.note(f"unsubscribe: {addr} names no current watcher")
            raise Ignore("unsubscribe: the address names no current watcher")
        ticket, email = done
        ctx.ticket = ticket
        ctx.note(f"unsubscribe: {email} no longer watches #{ticket.number}")
        raise Ignore(f"unsubscribe: {email} no longer watches #{ticket.number}")

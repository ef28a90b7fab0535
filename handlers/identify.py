"""Who wrote the mail: a known contact, or the unknown-sender policy (correspondent / register / reject /
default-reporter)."""

from __future__ import annotations

from email.message import Message

from gateway import addresses
from gateway.config import Config
from gateway.outcomes import Ignore, Quarantine, Reject
from gateway.pipeline import MailContext
from gateway.store.base import Asks, Upcoming

AMBIGUOUS = "ambiguous sender"  # the quarantine reason's prefix; `mail replay` releases it


def single_address(msg: Message, header: str) -> str | None:
    """The one address in a header (gateway.addresses), or None when absent, several, malformed or
    ambiguous."""
    try:  # raw values: policy.default's address parser is slow on hostile input
        values = [str(v) for k, v in msg.raw_items() if k.lower() == header.lower()]
    except Exception:  # noqa: BLE001 -- a malformed header is simply not usable
        return None
    author = addresses.read_author(values, header) if values else None
    return author.addr if author is not None and not author.ambiguous else None


def asks(mail: Upcoming, config: Config) -> Asks:
    """Declared ahead: the sender's contact (the listeners' lookups of the sender too: rate caps)."""
    addr = mail.parsed.from_addr
    return Asks(emails=[addr], senders=[addr]) if addr else Asks()


def _sender_address(ctx: MailContext) -> str:
    p = ctx.parsed
    assert p is not None
    if p.ambiguous:
        if AMBIGUOUS not in (ctx.mail.released or []):
            raise Quarantine(f"{AMBIGUOUS}: {p.ambiguous}")
        ctx.note(f"identify: {p.ambiguous}; released by an admin (replay): read as this gateway reads it")
    if p.from_addr:
        return p.from_addr
    problem = p.from_problem or "no usable From address"
    if p.from_problem == "no From header":
        env = addresses.read_envelope(ctx.mail.envelope_from)
        if env:
            ctx.note(f"identify: no From header; using the envelope sender {env}")
            return env
        return_path = single_address(p.message, "Return-Path")
        if return_path:
            ctx.note(f"identify: no From header; using the Return-Path header {return_path}")
            return return_path
    raise Quarantine(f"no usable sender: {problem}")


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None
    email = _sender_address(ctx)
    if ctx.config.is_gateway_address(email):
        raise Ignore(f"loop: mail from the gateway's own address {email}")
    ctx.sender_email = email
    ctx.sender_name = p.from_name
    contact = ctx.store.contact(email)
    if contact is not None:
        ctx.sender = ctx.reporter = contact
        ctx.note(f"identify: known {contact.role} {email}")
        return
    policy = ctx.config.gateway["unknown_senders"]
    if policy == "correspondent":  # the sender is the reporter: no account, no organisation
        ctx.sender = ctx.reporter = ctx.store.register(email, name=p.from_name, correspondent=True, flush=False)
        ctx.note(f"identify: new correspondent {email} (policy 'correspondent')")
    elif policy == "register":
        ctx.sender = ctx.reporter = ctx.store.register(email, name=p.from_name, auto_registered=True,
                                                       flush=False)  # written with the ticket or comment
        org = ctx.sender.organisation
        ctx.note(f"identify: registered new customer {email}" + (f" (organisation {org.name})" if org else ""))
    elif policy == "reject":
        raise Reject(f"unknown sender {email} (policy 'reject')")
    else:
        default = ctx.config.gateway["default_reporter"]
        ctx.reporter = ctx.store.contact(default) or ctx.store.add_contact(default, name="Unknown sender")
        ctx.note(f"identify: unknown sender {email}; reporter is {default} (policy 'default-reporter')")

"""No relay: whom one mail may make a watcher, and whom the gateway may mail.

* A mail adds at most `limits.max_watchers_per_mail` watchers (from its Cc); the addresses past the bound are
  recorded in the decision trace and not added (nor looked up).
* The gateway mails a watcher only when the address wrote to the gateway itself, was added by staff (a staff
  member's mail Cc'd it, or an admin added the contact), or was Cc'd by an authenticated participant (a
  sender whose mail passed sender authentication). Anyone else a stranger names stays a silent watcher.

`plan_cc` and `vouch` are pure; `mailable` reads the two `vouched` columns; `cc_watchers` and
`add_cc_watchers` are the pipeline's side (handlers/thread.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.models import Contact, Watcher
    from gateway.pipeline import MailContext

WROTE = "wrote to the gateway"
ADMIN = "added by an admin"


@dataclass
class CcPlan:
    take: list[tuple[str, str]] = field(default_factory=list)   # (name, address) to add, in Cc order
    over: list[str] = field(default_factory=list)               # past the bound: not added
    skipped: int = 0                                            # not addresses we would add (gateway, sender...)


def plan_cc(cc: Sequence[tuple[str, str]], *, exclude: Iterable[str], is_gateway: Callable[[str], bool],
            limit: int, already: Iterable[str] = ()) -> CcPlan:
    """The Cc addresses to add as new watchers, at most `limit`; `already` (watching) and `exclude` (the
    sender, the reporter) are left out without counting against the bound."""
    out = CcPlan()
    ex = {e.lower() for e in exclude if e}
    have = {a.lower() for a in already}
    seen: set[str] = set()
    for name, addr in cc:
        a = (addr or "").strip().lower()
        if not a or a.count("@") != 1 or a in seen or a in ex or is_gateway(a):
            out.skipped += 1
            continue
        seen.add(a)
        if a in have:
            continue
        if len(out.take) < limit:
            out.take.append((name, a))
        else:
            out.over.append(a)
    return out


def vouch(sender: str | None, *, staff: bool, authenticated: bool) -> str | None:
    """Why the watchers this sender's mail adds may be mailed, or None (they are not, until they write)."""
    if staff:
        return f"added by staff {sender}"
    if authenticated:
        return f"Cc'd by authenticated {sender}"
    return None


def mailable(w: Watcher) -> bool:
    c = w.contact
    return bool(w.vouched or c.vouched or c.is_staff)


def contact_mailable(c: Contact | None) -> bool:
    return bool(c is not None and (c.vouched or c.is_staff))


# The pipeline's side ---------------------------------------------------------------------------------------
def _authenticated(ctx: MailContext) -> bool:
    from gateway.auth import PASS

    return ctx.auth is not None and ctx.auth.verdict == PASS


def _plan(ctx: MailContext, already: Iterable[str]) -> tuple[CcPlan, str | None]:
    p = ctx.parsed
    assert p is not None
    limit = int(ctx.config.limits["max_watchers_per_mail"])
    exclude = [ctx.sender_email or "", ctx.reporter.email if ctx.reporter is not None else ""]
    plan = plan_cc(p.cc, exclude=exclude, is_gateway=ctx.config.is_gateway_address, limit=limit, already=already)
    staff = bool(ctx.sender is not None and ctx.sender.is_staff)
    why = vouch(ctx.sender_email, staff=staff, authenticated=_authenticated(ctx))
    if plan.over:
        shown = ", ".join(plan.over[:20]) + (f" and {len(plan.over) - 20} more" if len(plan.over) > 20 else "")
        ctx.note(f"relay: {len(plan.over)} Cc address(es) past limits.max_watchers_per_mail = {limit}, not "
                 f"added: {shown}")
    return plan, why


def _note(ctx: MailContext, added: list[str], why: str | None) -> None:
    if not added:
        return
    ctx.note(f"thread: watchers added from Cc: {', '.join(added)}")
    if why is None:
        ctx.note("relay: the sender is neither staff nor authenticated: the new watchers are not mailed until "
                 "they write to the gateway themselves or staff adds them")
    else:
        ctx.note(f"relay: new watchers may be mailed ({why})")


def mark_sender(ctx: MailContext) -> None:
    """The sender wrote to the gateway: the gateway may mail it from now on."""
    c = ctx.sender
    if c is not None and c.vouched is None and not ctx.dry_run:
        c.vouched = WROTE


def _register(ctx: MailContext, addr: str, name: str) -> Contact:
    """A Cc'd address the gateway does not know: a registered customer under unknown_senders = 'register',
    else a correspondent (no account, no organisation), as a sender would be."""
    if ctx.config.gateway["unknown_senders"] == "register":
        return ctx.store.register(addr, name=name, auto_registered=True)
    return ctx.store.register(addr, name=name, correspondent=True)


def cc_watchers(ctx: MailContext) -> list[tuple[Contact, str | None]]:
    """For a new ticket: the Cc'd contacts (registered when new) to be its watchers, with why each may be
    mailed (None: not), within the bound."""
    plan, why = _plan(ctx, ())
    out = []
    for name, addr in plan.take:
        contact = ctx.store.contact(addr) or _register(ctx, addr, name)
        out.append((contact, why))
    _note(ctx, [c.email for c, _ in out], why)
    return out


def add_cc_watchers(ctx: MailContext) -> None:
    """For a comment: the Cc'd addresses become watchers of its ticket, within the bound."""
    assert ctx.ticket is not None
    plan, why = _plan(ctx, (w.contact.email for w in ctx.ticket.watchers))
    if why is not None:  # silent watchers that staff or an authenticated participant Cc's again may be mailed
        assert ctx.parsed is not None
        named = {a.lower() for _, a in ctx.parsed.cc[:1000]}
        for w in ctx.ticket.watchers:
            if not mailable(w) and w.contact.email in named:
                ctx.store.add_watcher(ctx.ticket, w.contact, vouched=why)  # known: vouched, said to listeners
                ctx.note(f"relay: watcher {w.contact.email} may be mailed from now on ({why})")
    added = []
    for name, addr in plan.take:
        contact = ctx.store.contact(addr) or _register(ctx, addr, name)
        if ctx.store.add_watcher(ctx.ticket, contact, vouched=why):
            added.append(addr)
    _note(ctx, added, why)

"""A reply threaded before its original would open a ticket of its own: when no ticket knows the Message-IDs it
names but a stored mail not threaded yet carries one of them, the reply waits for it (`Wait`: it stays
'received' and is threaded again after it). Bounded (gateway.replywait): at most MAX_REFS Message-IDs looked at,
at most gateway.reply_wait_seconds from the mail's arrival. Only stored mail waits (`ctx.may_wait`): an import
threads its mails in their order, and nothing would thread a waiting one again.
"""

from __future__ import annotations

from gateway.outcomes import Wait
from gateway.pipeline import MailContext
from gateway.replywait import may_wait, referenced


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    if ctx.ticket is not None or not ctx.may_wait or p is None or ctx.related is not None:
        return  # matched already, or a ticket named (a stranger's link, a follow-up): nothing to wait for
    ids = referenced(p.in_reply_to, p.references, p.message_id)
    if not ids:
        return
    limit = ctx.config.gateway["reply_wait_seconds"]
    age = (ctx.clock() - ctx.mail.received_at).total_seconds()
    found = ctx.store.originals(ids, ctx.mail.id)
    if found.waiting:
        mid, mail_id = found.waiting[0]
        if may_wait(age, limit):
            raise Wait(f"waiting for <{mid}> (mail {mail_id}), stored but not threaded yet")
        ctx.note(f"wait: <{mid}> (mail {mail_id}) is still not threaded after {limit} s: threaded without it")
        return
    # another instance threaded the original between `match`'s look-up and this one (PostgreSQL, READ
    # COMMITTED): a ticket knows it now, so the mail runs again (it joins that ticket then)
    if found.threaded and may_wait(age, limit):
        raise Wait(f"<{found.threaded[0]}> was threaded meanwhile: running again")

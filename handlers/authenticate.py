"""Sender authentication (gateway.auth): a mail whose From domain fails DMARC (or, without a DMARC record,
has no aligned pass and an aligned failure) never acts as its sender: quarantined with the reason
'sender authentication failed' (an admin may replay it: `mail replay ID` accepts it as it is).

The result found when the mail arrived is used (stored with the mail); a mail stored without one (an import,
a row from before) gets the trusted Authentication-Results only, here -- no DNS inside the transaction.
"""

from __future__ import annotations

from gateway import auth
from gateway.envelope import Envelope
from gateway.outcomes import Quarantine
from gateway.pipeline import MailContext


def handle(ctx: MailContext) -> None:
    m = ctx.mail
    found = auth.stored(m.auth)
    if found is None and not ctx.config.values["authentication"]["trusted_authserv_ids"]:
        found = auth.AuthResult()  # nothing checked on arrival and no headers to believe: unverified
    if found is None:
        env = Envelope(mail_from=m.envelope_from, rcpt_tos=tuple(m.envelope_to or ()), source=m.source,
                       source_ref=m.source_ref, client_ip=m.client_ip, client_helo=m.client_helo)
        found = auth.Authenticator(ctx.config).check(ctx.raw, env, verify=False)
        if not ctx.dry_run:
            m.auth = found.as_dict()
    ctx.auth = found
    for note in found.notes:
        ctx.note(f"authenticate: {note}")
    if found.verdict == auth.PASS:
        ctx.note(f"authenticate: {found.summary()}")
        return
    if found.verdict == auth.NONE:
        ctx.note(f"authenticate: unverified sender ({found.summary()})")
        return
    ctx.note(f"authenticate: FAILED ({found.summary()})")
    if auth.REASON in (m.released or []):
        ctx.note("authenticate: accepted by an admin (replay): the mail acts as its sender")
        return
    raise Quarantine(f"{auth.REASON}: {found.summary()}")

"""Builders for test mails (the stdlib email API; real bytes as an MTA would hand them over)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

_n = itertools.count(1)


def make_mail(*, sender: str = "Alice Customer <alice@customer.example>", to: str = "support@example.com",
              subject: str = "Printer on fire", body: str = "The printer is on fire.\n", cc: str | None = None,
              message_id: str | None = None, in_reply_to: str | None = None, references: str | None = None,
              headers: dict[str, str] | None = None, attachments: Sequence[tuple[str, str, bytes]] = (),
              html: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    if cc:
        msg["Cc"] = cc
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 2, 9, next(_n) % 60, tzinfo=UTC))
    msg["Message-ID"] = message_id or make_msgid(domain="customer.example")
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for k, v in (headers or {}).items():
        msg[k] = v
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    for filename, ctype, data in attachments:
        maintype, subtype = ctype.split("/", 1)
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return bytes(msg)


def message_id_of(raw: bytes) -> str:
    import email

    return str(email.message_from_bytes(raw)["Message-ID"])


AUTHSERV = "mx.example.com"


def authenticated(domain: str = "customer.example", result: str = "pass", authserv: str = AUTHSERV) -> dict[str, str]:
    """Headers our MTA (authserv-id `authserv`) adds on receipt: its Authentication-Results with a DMARC result
    for `domain`, above its Received field. Believed with authentication.trusted_authserv_ids = [authserv]."""
    return {"Authentication-Results": f"{authserv}; dmarc={result} header.from={domain}",
            "Received": f"from mail.{domain} (mail.{domain} [192.0.2.25]) by {authserv} with ESMTPS; "
                        "Mon, 2 Nov 2026 09:29:00 +0000"}


TRUST_MX = {"trusted_authserv_ids": [AUTHSERV]}

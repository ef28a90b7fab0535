"""The envelope of one inbound mail: who the transport says sent it and to whom, and where it came from.
A leaf module: every transport builds one, the intake and the prefetch read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Envelope:
    mail_from: str | None = None           # SMTP MAIL FROM ('' for the null sender <>), None if unknown
    rcpt_tos: tuple[str, ...] = ()
    source: str = "stdin"                  # smtp | lmtp | imap | stdin | file | maildir | mbox
    source_ref: str | None = None          # e.g. imap account/folder/uidvalidity/uid, or a file path
    client_ip: str | None = None           # SMTP/LMTP client (or `ingest --client-ip`): for SPF
    client_helo: str | None = None         # its HELO/EHLO/LHLO name
    auth: dict[str, Any] | None = None     # sender authentication found on arrival (gateway.auth), if checked
    # an import of mail delivered long ago (`ingest` of files, Maildirs, mboxes): its ticket or comment keeps
    # the mail's Date where plausible (gateway.history); quiet: nothing is mailed for it (no `--notify`)
    historic: bool = False
    quiet: bool = False

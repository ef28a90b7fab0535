"""What marks mail as ours: the Message-ID format, the loop header and the signed reply addresses.

The outbound feature writes them; the core's `token` handler reads them back (a loop, or a reply naming a
ticket). Both import this leaf module, so the core needs nothing from the optional outbound feature.

* Message-ID `tg.<32 hex>.<ticket number>@<our domain>`: unique, recognisable when it comes back.
* `X-Ticket-Gateway-Loop`: set on everything we send (gateway.autoreply treats the same name as a loop).
* Unsubscribe tokens `u<number>-<mac>` (List-Unsubscribe: a mailto address and a one-click URL) for watchers.
* Reply address `support+<number>-<mac>@example.com`: the token binds a ticket and one recipient,
  mac = HMAC-SHA256(secret, "<ticket id>:<recipient>") truncated to 120 bits, in lowercase base32 (local
  parts are often lowercased on the way back). The secret comes from the config or is generated once
  into the data directory (`load_secret`).
* Note address `support+note-<number>-<mac>@example.com` (staff only): the same, signed over
  "note:<ticket id>:<recipient>"; mail from that staff member to it is an internal note on the ticket. The
  plain `support+note@example.com` (staff.note_subaddress) marks a mail as a note without naming a ticket.

Pure apart from the secret file; no email package import (the MTA pipe's `ingest` starts fast).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, ConfigError

LOOP_HEADER = "X-Ticket-Gateway-Loop"

MAC_BYTES = 15  # 120 bits
_TOKEN_RE = re.compile(r"^(note-)?(\d{1,12})-([a-z2-7]{24})$")
NOTE_PREFIX = "note-"
SECRET_FILE = "reply-secret"
MIN_SECRET_CHARS = 24
_OUR_MSGID = re.compile(r"^tg\.[0-9a-f]{32}\.\d+@(.+)$", re.I)


def our_domain(config: Config) -> str:
    """The domain of our Message-IDs: outbound.domain, else the domain of the From address."""
    ob = config.outbound
    return str(ob["domain"] or (ob["from_address"] or config.gateway_addresses[0]).rpartition("@")[2]).lower()


def new_message_id(domain: str, ticket_number: int | None) -> str:
    """`tg.<32 hex>.<ticket>@domain`: unique, on our domain, recognisable when it comes back (loops)."""
    return f"tg.{uuid.uuid4().hex}.{ticket_number or 0}@{domain}"


def is_our_message_id(message_id: str | None, domain: str) -> bool:
    if not message_id:
        return False
    m = _OUR_MSGID.match(message_id.strip().strip("<>"))
    return m is not None and m.group(1).lower() == domain.lower()


# Signed reply addresses ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParsedToken:
    number: int
    mac: str
    note: bool = False  # a note address: mail to it is an internal note


def _mac(secret: bytes, ticket_id: int, recipient: str, note: bool = False) -> str:
    msg = f"{'note:' if note else ''}{int(ticket_id)}:{recipient.strip().lower()}".encode()
    digest = hmac.new(secret, msg, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")


def make_token(secret: bytes, *, ticket_id: int, ticket_number: int, recipient: str, note: bool = False) -> str:
    return f"{NOTE_PREFIX if note else ''}{int(ticket_number)}-{_mac(secret, ticket_id, recipient, note)}"


def parse_token(token: str) -> ParsedToken | None:
    m = _TOKEN_RE.match(token.strip().lower())
    return ParsedToken(int(m.group(2)), m.group(3), note=bool(m.group(1))) if m else None


def verify(secret: bytes, token: str, *, ticket_id: int, recipient: str) -> bool:
    p = parse_token(token)
    return p is not None and hmac.compare_digest(p.mac, _mac(secret, ticket_id, recipient, p.note))


def token_address(base_address: str, token: str) -> str:
    local, _, domain = base_address.rpartition("@")
    return f"{local.split('+', 1)[0]}+{token}@{domain}"


def token_of_address(addr: str | None, bases: tuple[str, ...]) -> str | None:
    """The token in `local+token@domain` when local@domain is one of `bases` (lowercase), else None."""
    if not addr:
        return None
    addr = addr.strip().strip("<>").lower()
    local, _, domain = addr.rpartition("@")
    if "+" not in local:
        return None
    base, _, token = local.partition("+")
    if f"{base}@{domain}" not in bases:
        return None
    return token if parse_token(token) else None


# Signed unsubscribe tokens (List-Unsubscribe) ---------------------------------------------------------------
# `u<ticket number>-<mac>`, mac = HMAC-SHA256(secret, "unsubscribe:<ticket id>:<watcher's address>") truncated
# like a reply token's: a different message, so a reply token is never an unsubscribe token or the reverse.
# In the mailto address `support+u42-<mac>@example.com` and in the one-click URL .../unsubscribe/u42-<mac>.
_UNSUB_RE = re.compile(r"^u(\d{1,12})-([a-z2-7]{24})$")


def _unsub_mac(secret: bytes, ticket_id: int, recipient: str) -> str:
    msg = f"unsubscribe:{int(ticket_id)}:{recipient.strip().lower()}".encode()
    digest = hmac.new(secret, msg, hashlib.sha256).digest()[:MAC_BYTES]
    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")


def make_unsubscribe_token(secret: bytes, *, ticket_id: int, ticket_number: int, recipient: str) -> str:
    return f"u{int(ticket_number)}-{_unsub_mac(secret, ticket_id, recipient)}"


def parse_unsubscribe_token(token: str) -> ParsedToken | None:
    m = _UNSUB_RE.match(token.strip().lower())
    return ParsedToken(int(m.group(1)), m.group(2)) if m else None


def verify_unsubscribe(secret: bytes, token: str, *, ticket_id: int, recipient: str) -> bool:
    p = parse_unsubscribe_token(token)
    return p is not None and hmac.compare_digest(p.mac, _unsub_mac(secret, ticket_id, recipient))


def unsubscribe_token_of_address(addr: str | None, bases: tuple[str, ...]) -> str | None:
    """The token in `local+u<number>-<mac>@domain` when local@domain is one of `bases` (lowercase), else None."""
    token = subaddress_of(addr, bases)
    return token if token and parse_unsubscribe_token(token) else None


def subaddress_of(addr: str | None, bases: tuple[str, ...]) -> str | None:
    """The `+detail` of `local+detail@domain` (lowercase) when local@domain is one of `bases`, else None."""
    if not addr:
        return None
    local, _, domain = addr.strip().strip("<>").lower().rpartition("@")
    base, plus, detail = local.partition("+")
    return detail if plus and f"{base}@{domain}" in bases else None


def load_secret(configured: str, data_dir: Path) -> bytes:
    """The configured secret, else the one in <data_dir>/reply-secret, generated (256 bits) on first use.

    Two processes starting at once: the file is created exclusively; the loser reads the winner's."""
    if configured:
        if len(configured) < MIN_SECRET_CHARS:
            raise ValueError(f"outbound.reply_secret: must be at least {MIN_SECRET_CHARS} characters")
        return configured.encode("utf-8")
    path = Path(data_dir) / SECRET_FILE
    for _ in range(50):
        try:
            value = path.read_text("ascii").strip()
            if len(value) >= MIN_SECRET_CHARS:
                return value.encode("ascii")
            if value:
                raise ValueError(f"{path}: the stored reply secret is shorter than {MIN_SECRET_CHARS} characters")
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            time.sleep(0.02)  # another process is writing it
            continue
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
    raise RuntimeError(f"cannot read or create the reply secret {path}")


_secrets: dict[tuple[str, str], bytes] = {}  # (configured, data_dir) -> secret: read once per process


def reply_secret(config: Config) -> bytes:
    """The HMAC secret for reply tokens (configured, or generated once into the data directory)."""
    key = (config.outbound["reply_secret"], str(config.data_dir))
    s = _secrets.get(key)
    if s is None:
        try:
            s = _secrets[key] = load_secret(config.outbound["reply_secret"], config.data_dir)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"outbound.reply_secret: {e}") from e
    return s

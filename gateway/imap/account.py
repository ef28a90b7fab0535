"""What an IMAP poller works with: the `[[imap]]` account, the counts of one drain (PollResult) and the
exceptions that end a drain or an account's polling."""

from __future__ import annotations

import logging
import ssl
from collections import Counter
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config


@dataclass(frozen=True)
class ImapAccount:
    """One `[[imap]]` table."""

    name: str
    host: str
    user: str
    port: int = 0
    security: str = "tls"  # tls | starttls | none
    password: str = ""
    password_file: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    quarantine_folder: str = "Quarantine"
    address: str = ""
    poll_seconds: float = 60.0
    idle_seconds: float = 300.0
    batch_size: int = 50
    timeout_seconds: float = 60.0
    ca_file: str = ""
    lease_seconds: float = 30.0
    base_dir: Path = field(default_factory=Path.cwd)

    @classmethod
    def from_config(cls, table: Mapping[str, Any], base_dir: Path | None = None) -> ImapAccount:
        known = {f for f in cls.__dataclass_fields__ if f != "base_dir"}
        values = {k: v for k, v in table.items() if k in known}
        return cls(**values, base_dir=base_dir or Path.cwd())

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    def _path(self, value: str) -> Path:
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def secret(self) -> str:
        if self.password_file:
            lines = self._path(self.password_file).read_text().splitlines()
            return lines[0] if lines else ""
        return self.password

    def ssl_context(self) -> ssl.SSLContext:
        """Certificates and host name verified, against `ca_file` only when given, else the system's CAs.
        Raises TlsSetupError when the CA file cannot be used."""
        if not self.ca_file:
            return ssl.create_default_context()
        path = self._path(self.ca_file)
        try:
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as e:
            raise TlsSetupError(f"ca_file {path}: cannot load CA certificates: {e}") from e

    def ref(self, folder: str, uidvalidity: int, uid: int) -> str:
        return f"{self.name}/{folder}/{uidvalidity}/{uid}"

    @property
    def needs_refile(self) -> bool:
        """A quarantined mail threaded after its move must be moved on from processed_folder."""
        a, b = self.processed_folder, self.quarantine_folder
        return bool(a and b and a != b)


def accounts(config: Config) -> list[ImapAccount]:
    """The configured `[[imap]]` accounts. Raises ConfigError for duplicate names or both password keys."""
    from gateway.config import ConfigError

    out: list[ImapAccount] = []
    for i, table in enumerate(config.values.get("imap", [])):
        acct = ImapAccount.from_config(table, config.base_dir)
        if any(a.name == acct.name for a in out):
            raise ConfigError(f"imap[{i}].name: {acct.name!r} is used by another [[imap]] account")
        if acct.password and acct.password_file:
            raise ConfigError(f"imap[{i}].password_file: give password or password_file, not both")
        for key in ("processed_folder", "quarantine_folder"):
            if getattr(acct, key) == acct.folder:
                raise ConfigError(f"imap[{i}].{key}: must differ from folder ({acct.folder!r})")
        out.append(acct)
    return out


@dataclass
class PollResult:
    """What one drain did. `outcomes` counts the pipeline outcomes of mails threaded in this drain."""

    account: str
    uidvalidity: int | None = None
    found: int = 0  # messages in the folder when the drain started (UNDELETED)
    fetched: int = 0  # bodies fetched
    stored: int = 0  # stored through the intake
    known: int = 0  # already stored before (crash or error before the move): moved without fetching
    moved: int = 0  # moved to the processed folder
    quarantined: int = 0  # moved to the quarantine folder (pipeline quarantine, or over the size limit)
    oversize: int = 0  # over limits.max_message_size: not fetched, moved to quarantine
    deferred: int = 0  # left in place: the database was unavailable
    failed: int = 0  # an unexpected error (logged): left in place, or not threaded; tried again later
    threaded: int = 0  # stored mails threaded in this drain (also ones stored by an earlier drain)
    postponed: int = 0  # stored and moved, threading postponed (store unavailable, stopping)
    paused: bool = False  # nothing fetched: the data directory is nearly full (gateway.guard.diskspace)
    standby: str = ""  # nothing done: another instance polls this mailbox (who holds the lease)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def store_unavailable(self) -> bool:
        return self.deferred > 0

    def as_dict(self) -> dict[str, Any]:
        return {"account": self.account, "uidvalidity": self.uidvalidity, "found": self.found,
                "fetched": self.fetched, "stored": self.stored, "known": self.known, "moved": self.moved,
                "quarantined": self.quarantined, "oversize": self.oversize, "deferred": self.deferred,
                "failed": self.failed, "threaded": self.threaded, "postponed": self.postponed,
                "paused": self.paused, "standby": self.standby, "outcomes": dict(self.outcomes)}


class Deferred(Exception):
    """The database is unavailable: stop this drain, leave the rest in place."""


class Stopped(Exception):
    """The stop event was set, or the lease was lost: the drain ends after the mails in hand are moved."""


class TlsSetupError(Exception):
    """TLS cannot work with this configuration: the server's certificate was not accepted (unknown CA,
    expired, wrong host name) or the CA file cannot be used. Not retried: the operator must act."""


class Prefixed(logging.LoggerAdapter[logging.Logger]):
    """Log lines of one account: `imap NAME: ...`."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"imap {(self.extra or {}).get('account')}: {msg}", kwargs


__all__ = ["Deferred", "ImapAccount", "PollResult", "Prefixed", "Stopped", "TlsSetupError", "accounts"]

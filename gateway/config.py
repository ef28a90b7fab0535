"""Configuration: a documented schema, TOML loading and validation.

The schema below is the single source of truth: `config.example.toml` is generated from it
(`ticket-gateway check-config --example`) and a test keeps the two equal. A wrong key or a bad value stops
start-up with a `ConfigError` that names the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

ENV_VAR = "TICKET_GATEWAY_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Key:
    type: type | tuple[type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    item_type: type | None = None  # for lists


@dataclass(frozen=True)
class Section:
    doc: str
    keys: Mapping[str, Key]
    many: bool = False  # an array of tables ([[name]])
    example_items: tuple[Mapping[str, Any], ...] = ()


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


_ADDR = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _addresses(v: list[str]) -> str | None:
    bad = [a for a in v if not _ADDR.match(a)]
    return f"not an email address: {bad[0]!r}" if bad else None


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0-65535"


def _tag_prefix(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9#_-]{1,16}", v) else "letters, digits, # _ - only (1-16)"


SCHEMA: dict[str, Section] = {
    "gateway": Section(
        "What the gateway is and whom it serves.",
        {
            "data_dir": Key(str, "./var", "Directory for the SQLite database, attachments and the local outbox Maildir."),
            "addresses": Key(
                list, ["support@localhost"],
                "Addresses the gateway receives mail for (and their +token sub-addresses). Never made watchers.",
                item_type=str, check=_addresses),
            "unknown_senders": Key(
                str, "default-reporter",
                "Mail from an address that is not a known contact: 'register' creates a customer contact "
                "(organisation by mail domain); 'reject' records the mail as rejected; 'default-reporter' opens "
                "the ticket on behalf of the sender under gateway.default_reporter (the sender is recorded).",
                choices=("register", "reject", "default-reporter")),
            "default_reporter": Key(str, "unknown-sender@localhost",
                                    "Contact used as reporter under unknown_senders = 'default-reporter'.",
                                    check=lambda v: _addresses([v])),
            "subject_tag_prefix": Key(str, "#", "Subject tag prefix: '#' gives '[#42]'.", check=_tag_prefix),
            "reopen_days": Key(int, 14, "A reply to a closed ticket reopens it within this many days of closing; "
                               "later it opens a new ticket linked to the old one.", check=_non_negative),
            "staff_comments_internal": Key(bool, False,
                                           "Comments that staff send by mail are internal notes (else public)."),
        },
    ),
    "database": Section(
        "Where tickets live.",
        {
            "url": Key(str, "", "SQLAlchemy URL. Empty: sqlite under gateway.data_dir. PostgreSQL: "
                       "'postgresql+psycopg://user@host/dbname'."),
            "busy_timeout_ms": Key(int, 30000, "SQLite: how long a writer waits for the lock.", check=_positive),
            "pool_size": Key(int, 5, "PostgreSQL: connections kept open per process.", check=_positive),
        },
    ),
    "attachments": Section(
        "Attachment storage (content-addressed by sha256).",
        {
            "path": Key(str, "", "Directory. Empty: <gateway.data_dir>/attachments."),
        },
    ),
    "limits": Section(
        "Guards against hostile or broken mail.",
        {
            "max_message_size": Key(int, 50 * 1024 * 1024, "Largest mail accepted, in bytes.", check=_positive),
            "max_mime_depth": Key(int, 50, "Deepest MIME nesting parsed; deeper mail is quarantined.",
                                  check=_positive),
            "max_mime_parts": Key(int, 1000, "Most MIME parts parsed; more is quarantined.", check=_positive),
        },
    ),
    "logging": Section(
        "Logs.",
        {
            "level": Key(str, "INFO", "Log level.", choices=("DEBUG", "INFO", "WARNING", "ERROR")),
            "file": Key(str, "", "Log file (reopened on SIGHUP). Empty: standard error (journald under systemd)."),
        },
    ),
}


@dataclass
class Config:
    """Validated configuration: `cfg.get("gateway", "addresses")` or `cfg.gateway["addresses"]`."""

    values: dict[str, Any]
    source: str = "built-in defaults"
    base_dir: Path = field(default_factory=Path.cwd)

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    # Derived paths -------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        p = Path(os.path.expanduser(self.values["gateway"]["data_dir"]))
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def database_url(self) -> str:
        url = self.values["database"]["url"]
        return url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def attachments_dir(self) -> Path:
        p = self.values["attachments"]["path"]
        if not p:
            return self.data_dir / "attachments"
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.base_dir / path

    @property
    def gateway_addresses(self) -> tuple[str, ...]:
        return tuple(a.lower() for a in self.values["gateway"]["addresses"])

    def is_gateway_address(self, addr: str | None) -> bool:
        """True for one of our addresses or a +token sub-address of one."""
        if not addr:
            return False
        addr = addr.lower()
        local, _, domain = addr.rpartition("@")
        base = f"{local.split('+', 1)[0]}@{domain}"
        return addr in self.gateway_addresses or base in self.gateway_addresses


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list", float: "a number"}.get(
        t, t.__name__)


def _check_value(where: str, key: Key, value: Any) -> Any:
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, key.type) and not (key.type in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(key.type)}, got {value!r}")
    if key.item_type is not None:
        for item in value:
            if not isinstance(item, key.item_type):
                raise ConfigError(f"{where}: every item must be {_type_name(key.item_type)}, got {item!r}")
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, key.choices))}, got {value!r}")
    if key.check is not None:
        err = key.check(value)
        if err:
            raise ConfigError(f"{where}: {err}")
    return value


def _validate_table(where: str, section: Section, table: Any) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(table) - set(section.keys))
    if unknown:
        known = ", ".join(section.keys)
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known keys: {known})")
    out: dict[str, Any] = {}
    for name, key in section.keys.items():
        if name in table:
            out[name] = _check_value(f"{where}.{name}", key, table[name])
        else:
            if key.default is None and key.doc.startswith("Required"):
                raise ConfigError(f"{where}.{name}: required key is missing")
            out[name] = _copy(key.default)
    return out


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def validate(data: Mapping[str, Any], *, source: str = "built-in defaults", base_dir: Path | None = None) -> Config:
    unknown = sorted(set(data) - set(SCHEMA))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section (known sections: {', '.join(SCHEMA)})")
    values: dict[str, Any] = {}
    for name, section in SCHEMA.items():
        raw = data.get(name)
        if section.many:
            if raw is None:
                values[name] = []
                continue
            if not isinstance(raw, list):
                raise ConfigError(f"{name}: expected a list of tables ([[{name}]])")
            values[name] = [_validate_table(f"{name}[{i}]", section, t) for i, t in enumerate(raw)]
        else:
            values[name] = _validate_table(name, section, raw if raw is not None else {})
    return Config(values=values, source=source, base_dir=base_dir or Path.cwd())


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """--config FILE, else $TICKET_GATEWAY_CONFIG, else built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return validate({})
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return validate(data, source=str(p), base_dir=p.resolve().parent)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)


def _wrap(text: str, prefix: str = "# ") -> list[str]:
    import textwrap

    return [prefix + line for line in textwrap.wrap(text, 100 - len(prefix))]


def example_toml() -> str:
    """The documented example config: every key, its default and what it does."""
    out = ["# ticket-gateway configuration. Every key is shown with its default value.",
           "# Generated from gateway/config.py (`ticket-gateway check-config --example`); keep them in step.",
           "# Start the gateway with --config FILE or TICKET_GATEWAY_CONFIG=FILE; an unknown key or a bad",
           "# value stops start-up with a message that names it.", ""]
    for name, section in SCHEMA.items():
        out += _wrap(section.doc)
        items = section.example_items if section.many else ({},)
        for item in items:
            out.append(f"[[{name}]]" if section.many else f"[{name}]")
            for kname, key in section.keys.items():
                out += _wrap(key.doc + (f" One of: {', '.join(map(str, key.choices))}." if key.choices else ""))
                value = item.get(kname, key.default)
                line = f"{kname} = {_toml_value(value)}"
                out.append(line if (kname in item or not section.many) else "# " + line)
            out.append("")
    return "\n".join(out).rstrip() + "\n"

"""`check-config` beyond the schema: the files the configuration names, the rules checked when a component
starts (listeners, IMAP accounts, templates), and a summary of what `serve` will run.

Nothing here writes anything or opens a network connection: an admin runs it as root on a host where the
service has never run.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError


def problems(config: Config) -> tuple[list[str], list[str]]:
    """(errors, warnings): every error stops `serve` or one of its parts; a warning is worth a look."""
    errors: list[str] = []
    warnings: list[str] = []
    for check in (_listeners, _imap, _outbound, _templates):
        check(config, errors, warnings)
    return errors, warnings


def _path(config: Config, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else config.base_dir / p


def _readable(where: str, path: Path, errors: list[str], *, first_line: bool = False) -> None:
    try:
        with path.open("rb") as f:
            head = f.readline()
    except OSError as e:
        errors.append(f"{where}: cannot read {path}: {e.strerror or e}")
        return
    if first_line and not head.strip():
        errors.append(f"{where}: {path} is empty (the first line is the password)")


def _call(errors: list[str], fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ConfigError as e:
        errors.extend(e.errors)
        return None


def _listeners(config: Config, errors: list[str], warnings: list[str]) -> None:
    from gateway.smtp import listener_specs

    specs = _call(errors, lambda: listener_specs(config)) or []
    for i, spec in enumerate(specs):
        if not config.values["listen"]:
            break  # the built-in defaults
        for key in ("tls_cert", "tls_key"):
            if spec[key]:
                _readable(f"listen[{i}].{key}", Path(spec[key]), errors)
        if spec["tls_cert"] and spec["tls_key"] and not any(e.startswith(f"listen[{i}].tls_") for e in errors):
            try:
                ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(spec["tls_cert"], spec["tls_key"])
            except (ssl.SSLError, OSError) as e:
                errors.append(f"listen[{i}].tls_cert: cannot load the certificate and key: {e}")
        if spec["path"] and not Path(spec["path"]).parent.is_dir():
            warnings.append(f"listen[{i}].path: the directory {Path(spec['path']).parent} does not exist (yet)")
        if not spec["path"] and spec["host"] not in ("127.0.0.1", "::1", "localhost") and not spec["tls_cert"]:
            warnings.append(f"listen[{i}]: {spec['protocol']} on {spec['host']} without STARTTLS")


def _imap(config: Config, errors: list[str], warnings: list[str]) -> None:
    from gateway.imap import TlsSetupError, accounts

    for i, acct in enumerate(_call(errors, lambda: accounts(config)) or []):
        where = f"imap[{i}]"
        if acct.ca_file:
            try:
                acct.ssl_context()
            except TlsSetupError as e:
                errors.append(f"{where}.{e}")
            if acct.security == "none":
                warnings.append(f"{where}.ca_file: not used with security 'none'")
        if acct.security == "none" and acct.host not in ("127.0.0.1", "::1", "localhost"):
            warnings.append(f"{where}.security: 'none' sends the password in plain text to {acct.host}")
        if acct.password_file:
            _readable(f"{where}.password_file", _path(config, acct.password_file), errors, first_line=True)
        elif not acct.password:
            errors.append(f"{where}.password_file: no password: give password_file (or password)")
        if acct.address and not config.is_gateway_address(acct.address):
            warnings.append(f"{where}.address: {acct.address!r} is not one of gateway.addresses")


def _outbound(config: Config, errors: list[str], warnings: list[str]) -> None:
    ob = config.outbound
    if not ob["enabled"]:
        return
    if ob["relay_password_file"]:
        _readable("outbound.relay_password_file", _path(config, ob["relay_password_file"]), errors,
                  first_line=True)
    if ob["relay_user"] and not ob["relay_password_file"]:
        errors.append("outbound.relay_password_file: relay_user is set but no password file")
    if ob["dkim_key_file"] and ob["dkim_selector"]:
        from gateway.outbound.dkimsign import DkimError, signer_of

        try:
            signer_of(config)
        except DkimError as e:
            errors.append(str(e))
    if ob["from_address"] and not config.is_gateway_address(ob["from_address"]):
        warnings.append(f"outbound.from_address: {ob['from_address']!r} is not one of gateway.addresses: "
                        "replies to notifications would not reach the gateway")


def _templates(config: Config, errors: list[str], warnings: list[str]) -> None:
    if not config.outbound["enabled"]:
        return
    tdir = config.notifications["template_dir"]
    if tdir and not _path(config, tdir).is_dir():
        errors.append(f"notifications.template_dir: {_path(config, tdir)} is not a directory")
        return
    from gateway.outbound import check_templates
    from gateway.sla import template_samples as sla_samples

    # every template renders with sample data, the SLA mails' too (the outbound feature does not know them)
    _call(errors, lambda: check_templates(config, extra=sla_samples(config)))


# The summary ------------------------------------------------------------------------------------------------
def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001
        return url


def summary(config: Config) -> list[tuple[str, str]]:
    """(what, how) lines: what `serve` (and the commands) will do with this configuration."""
    from gateway.imap import accounts
    from gateway.smtp import listener_specs

    g = config.gateway
    rows = [("addresses", ", ".join(config.gateway_addresses)),
            ("unknown senders", g["unknown_senders"]
             + (f" (reporter {g['default_reporter']})" if g["unknown_senders"] == "default-reporter" else ""))]
    specs = listener_specs(config)
    listen = []
    for s in specs:
        where = f"unix:{s['path']} (mode {s['socket_mode']})" if s["path"] else f"{s['host']}:{s['port'] or 'any'}"
        tls = ", STARTTLS required" if s["require_starttls"] else ", STARTTLS" if s["tls_cert"] else ""
        listen.append(f"{s['protocol']} {where}{tls}")
    rows.append(("listeners", "; ".join(listen) + ("" if config.values["listen"] else " (built-in defaults)")))
    http = config.values.get("http")
    if isinstance(http, dict):  # the HTTP API, where this version has one
        rows.append(("http", ", ".join(f"{k} {v}" for k, v in http.items() if k in ("enabled", "host", "port", "path"))
                     or "configured"))
    imap = [f"{a.name}: {a.user}@{a.host}:{a.effective_port} ({a.security}"
            f"{f', ca_file {a.ca_file}' if a.ca_file and a.security != 'none' else ''}), {a.folder} -> "
            f"{a.processed_folder or '(deleted)'}, lease {a.lease_seconds:.0f} s" for a in accounts(config)]
    rows.append(("imap accounts", "; ".join(imap) or "none"))
    routes = [f"{r['address']} -> group {r['group'] or '-'}, {r['priority']}, {r['type']}" for r in config.routes]
    rows.append(("routes", "; ".join(routes) or "none"))
    st = config.staff
    note = (f"{config.gateway_addresses[0].replace('@', '+' + st['note_subaddress'] + '@', 1)}"
            if st["note_subaddress"] else "off")
    rows.append(("staff by mail", f"commands {'on' if st['commands'] else 'off'}, note address {note}, "
                 f"customer replies to {' > '.join(st['notify']) or 'watching staff only'}"
                 + (f", {len(config.groups)} group(s)" if config.groups else "")))
    rows += [("warning", w) for w in config.warnings]
    rows.append(("outgoing mail", _outgoing(config)))
    rows.append(("database", redact(config.database_url)))
    data = config.data_dir
    missing = "" if data.is_dir() else " (does not exist yet: the first start creates it)"
    rows.append(("data dir", f"{data}{missing}"))
    rows.append(("attachments", str(config.attachments_dir)))
    lg = config.logging
    rows.append(("log", f"{lg['level']} to {lg['file'] or 'standard error'}"))
    return rows


def _outgoing(config: Config) -> str:
    ob = config.outbound
    if not ob["enabled"]:
        return "off (outbound.enabled = false)"
    sender = f"from {ob['from_name']} <{(ob['from_address'] or config.gateway_addresses[0])}>"
    if ob["relay_host"]:
        login = f", login {ob['relay_user']}" if ob["relay_user"] else ""
        security = {"starttls": "STARTTLS", "tls": "implicit TLS", "none": "plain, no TLS"}[ob["relay_security"]]
        return f"relay {ob['relay_host']}:{ob['relay_port']} ({security}{login}), {sender}"
    return f"no relay: written to the Maildir {config.data_dir / 'outbox-maildir'}, {sender}"

"""Outbound mail: templated notifications written to a durable outbox in the transaction that caused them,
signed reply addresses, loop guards, and delivery with retries (`deliver_due`).

`install(app)` is listed in gateway.app's features: it checks the templates (a missing variable stops the
start), resolves the reply secret and registers the listener in `app.listeners`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import ConfigError

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.outbound.notify import Outbound

__all__ = ["install", "notifier_of", "deliver_due", "flush", "reply_secret"]

_secrets: dict[tuple[str, str], bytes] = {}


def reply_secret(config) -> bytes:  # type: ignore[no-untyped-def]
    """The HMAC secret for reply tokens (configured, or generated once into the data directory)."""
    from gateway.outbound.tokens import load_secret

    key = (config.outbound["reply_secret"], str(config.data_dir))
    s = _secrets.get(key)
    if s is None:
        try:
            s = _secrets[key] = load_secret(config.outbound["reply_secret"], config.data_dir)
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError(f"outbound.reply_secret: {e}") from e
    return s


def install(app: "App") -> None:
    config = app.config
    if not config.outbound["enabled"]:
        return
    from gateway.outbound.notify import Outbound
    from gateway.outbound.render import Templates, TemplateError

    try:
        templates = Templates(config.notifications["template_dir"] or None)
        templates.check()
    except TemplateError as e:
        raise ConfigError(f"notifications.template_dir: {e}") from e
    app.listeners.append(Outbound(config, app.clock, templates, reply_secret(config)))


def notifier_of(app: "App") -> "Outbound | None":
    from gateway.outbound.notify import Outbound

    for listener in app.listeners:
        if isinstance(listener, Outbound):
            return listener
    return None


def deliver_due(app: "App", now=None, **kw):  # type: ignore[no-untyped-def]
    from gateway.outbound.sender import deliver_due as _deliver

    return _deliver(app, now, **kw)


def flush(app: "App", **kw):  # type: ignore[no-untyped-def]
    from gateway.outbound.sender import flush as _flush

    return _flush(app, **kw)


def install_service(service) -> None:  # type: ignore[no-untyped-def]
    """Component for gateway.service (COMPONENTS entry "gateway.outbound:install_service"): deliver what is
    due every outbound.deliver_seconds. Not behind the service's write gate: talking to a slow relay must
    never hold up incoming mail (SQLite's busy timeout covers the short claim/record writes)."""
    if notifier_of(service.app) is None:
        return

    def job() -> None:
        deliver_due(service.app)

    service.add_job("outbox-deliver", job, service.config.get("outbound", "deliver_seconds"), start_now=True)

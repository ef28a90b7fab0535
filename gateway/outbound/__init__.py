"""Outbound mail: templated notifications written to a durable outbox in the transaction that caused them,
signed reply addresses, loop guards, and delivery with retries (`deliver_due`).

`install(app)` is listed in gateway.app's features: it checks the templates (a missing variable stops the
start), resolves the reply secret and registers the listener in `app.listeners`.

The template check renders every template (notifications and SLA mails) with sample data under
StrictUndefined. That costs ~150 ms of jinja2 compilation, too much for every MTA-pipe `ingest` process,
which only queues rows and never renders. So:
* `serve` (install_service), `outbox flush` (sender.flush) and `check_templates(config, force=True)` (for
  `check-config`) always run the full check;
* every other start (`ingest`, the CLI) runs it only when the template sources or the code that feeds them
  changed since the last successful check: the key (sha256 over every template file the loader can see,
  override directory first, and over the modules that build the template variables) is kept in
  <data_dir>/templates-checked, written only after a successful check.
Rendering at delivery is StrictUndefined too: a template broken behind the check's back fails its row
(visible in `outbox list`), it never sends a blank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway.config import ConfigError

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.outbound.notify import Outbound

__all__ = ["install", "notifier_of", "deliver_due", "flush", "reply_secret", "check_templates",
           "check_app_templates"]

STAMP_FILE = "templates-checked"

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


def _sample_extra() -> list:  # type: ignore[type-arg]
    """(event, sample context) of the templates other features send through the outbox (SLA mails)."""
    try:
        from gateway.sla.mail import sample_events
    except ImportError:  # pragma: no cover -- the SLA feature is not installed
        return []
    return sample_events()


def _code_key() -> bytes:
    """The sources of the modules that build the template variables: a new version re-checks."""
    import hashlib
    from pathlib import Path

    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for p in (here / "render.py", here / "notify.py", here / "build.py", here.parent / "sla" / "mail.py"):
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"-")
    return h.digest()


def _check(config, templates, *, force: bool, record: bool = True) -> None:  # type: ignore[no-untyped-def]
    """Run the full sample render unless already done in this process, or (not forced) the stamp file says
    these exact sources passed before. Raises ConfigError naming the template. record=False: write nothing
    (check-config, often run as root before the service ever started, must not create the data directory)."""
    import hashlib
    import os

    from gateway.outbound.render import TemplateError

    if templates.checked:
        return
    try:
        key = hashlib.sha256(_code_key() + templates.fingerprint().encode()).hexdigest()
        stamp = config.data_dir / STAMP_FILE
        if not force:
            try:
                if stamp.read_text("ascii").strip() == key:
                    return
            except (OSError, UnicodeDecodeError):
                pass
        templates.check(_sample_extra())
    except TemplateError as e:
        raise ConfigError(f"notifications.template_dir: {e}") from e
    if not record:
        return
    try:  # best effort: a read-only data directory only means checking again next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f".{STAMP_FILE}.{os.getpid()}")
        tmp.write_text(key + "\n", "ascii")
        os.replace(tmp, stamp)
    except OSError:
        pass


def _templates(config):  # type: ignore[no-untyped-def]
    """The built-in templates with the operator's directory over them; a broken directory names its key."""
    from gateway.outbound.render import Templates, TemplateError

    try:
        return Templates(config.notifications["template_dir"] or None)
    except TemplateError as e:
        raise ConfigError(f"notifications.template_dir: {e}") from e


def check_templates(config, *, force: bool = True) -> None:  # type: ignore[no-untyped-def]
    """The start-up template check for a command that does not build an App (`check-config`)."""
    if not config.outbound["enabled"]:
        return
    _check(config, _templates(config), force=force, record=False)


def check_app_templates(app: "App", *, force: bool = True) -> None:
    """The full template check on the App's own Templates (compiled once; delivery reuses them)."""
    ob = notifier_of(app)
    if ob is not None:
        _check(app.config, ob.templates, force=force)


def install(app: "App") -> None:
    config = app.config
    if not config.outbound["enabled"]:
        return
    from gateway.outbound.notify import Outbound

    templates = _templates(config)
    _check(config, templates, force=False)
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
    check_app_templates(service.app, force=True)  # serve always runs the full template check

    def job() -> None:
        deliver_due(service.app)

    service.add_job("outbox-deliver", job, service.config.get("outbound", "deliver_seconds"), start_now=True)

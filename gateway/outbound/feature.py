"""The outbound feature's hooks: `install` (the App's start: check the templates, register the Outbound
listener) and `install_service` (`serve`: the delivery job)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gateway import ourmail
from gateway.outbound.check import check_app_templates, load_templates, run_check, template_samples
from gateway.outbound.notify import notifier_of

if TYPE_CHECKING:
    from gateway.host import AppHost, ServiceHost


def install(app: AppHost) -> None:
    """Feature hook (gateway.app): check the templates, register the Outbound listener. Installed after the
    features whose listeners use the outbox (their templates are checked with ours)."""
    config = app.config
    if not config.outbound["enabled"]:
        return
    from gateway.outbound.notify import Outbound

    templates = load_templates(config)
    run_check(config, templates, force=False, extra=template_samples(app))
    app.listeners.append(Outbound(config, app.clock, templates, ourmail.reply_secret(config)))


def install_service(service: ServiceHost) -> None:
    """Component for gateway.service (COMPONENTS entry "gateway.outbound:install_service"): deliver what is
    due every outbound.deliver_seconds. Not behind the service's write gate: talking to a slow relay must
    never hold up incoming mail (SQLite's busy timeout covers the short claim/record writes)."""
    from gateway.outbound.sender import SMTPTransport, Transport, deliver_due, make_transport

    app = service.app
    notifier = notifier_of(app)
    if notifier is None:
        return
    check_app_templates(app, force=True)  # serve always runs the full template check
    from gateway.config import ConfigError
    from gateway.outbound.dkimsign import DkimError

    try:  # a DKIM key that cannot sign stops the start, not the first mail
        notifier.dkim()
    except DkimError as e:
        raise ConfigError(str(e)) from e
    kept: list[Transport] = []  # one transport for every round: its relay connection is reused

    def job() -> None:
        if not kept:
            kept.append(make_transport(app))
        deliver_due(app, transport=kept[0])
        if isinstance(kept[0], SMTPTransport):
            kept[0].idle_close()

    service.add_job("outbox-deliver", job, service.config.get("outbound", "deliver_seconds"), start_now=True)

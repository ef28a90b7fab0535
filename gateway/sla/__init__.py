"""SLA feature (issue 5): policies in the database, deadline stamping, pending reminders and escalations.

* :mod:`gateway.sla.store`    policies in the database (CLI and config seed)
* :mod:`gateway.sla.listener` stamps/pauses/resumes/re-evaluates deadlines inside the ticket's transaction
* :mod:`gateway.sla.sweep`    the periodic sweep: escalations once per (ticket, kind, deadline), reminders
* :mod:`gateway.sla.state`    the badge state (on track, at risk, breached, paused, met)
* :mod:`gateway.sla.mail`     escalation/reminder mails through the outbox (adapter to gateway.outbound)

The pure rules live in :mod:`gateway.sla_policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.host import AppHost, ServiceHost


def install(app: AppHost) -> None:
    """Feature hook for gateway.app: registers the SLA listener on the App (before the outbound feature's:
    the outbound template check renders the SLA mails' templates with the listener's samples)."""
    if not app.config.get("sla", "enabled"):
        return
    from gateway.sla.listener import SlaListener

    app.listeners.append(SlaListener(app))


def add_jobs(app: AppHost, scheduler: Any) -> None:
    """Add the periodic SLA sweep to an APScheduler 3.x scheduler (for `serve`): an interval job every
    `sla.sweep_seconds`, coalesced (a scheduler that was down runs it once, not once per missed interval)
    and never two at a time in one process. Several processes may sweep at once: the database decides."""
    from gateway.sla.sweep import sweep

    if not app.config.get("sla", "enabled"):
        return
    seconds = app.config.get("sla", "sweep_seconds")
    scheduler.add_job(sweep, "interval", args=[app], seconds=seconds, id="sla-sweep", name="SLA sweep",
                      coalesce=True, max_instances=1, misfire_grace_time=None, replace_existing=True)


def install_service(service: ServiceHost) -> None:
    """Component for gateway.service (COMPONENTS entry "gateway.sla:install_service"): the SLA sweep as a
    periodic job of `serve`, run through the service's database write gate."""
    if not service.config.get("sla", "enabled"):
        return
    from gateway.sla.sweep import sweep

    app = service.app

    def job() -> None:
        with service.gate.hold(urgent=False):
            sweep(app)

    service.add_job("sla-sweep", job, service.config.get("sla", "sweep_seconds"), start_now=True)


def template_samples(config: Config) -> list[tuple[str, dict[str, Any]]]:
    """(event, sample context) of the SLA mails' templates, for a template check without an App
    (`check-config`); none when the SLA feature is off."""
    if not config.get("sla", "enabled"):
        return []
    from gateway.sla.mail import sample_events

    return sample_events()

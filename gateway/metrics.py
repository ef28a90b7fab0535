"""Prometheus metrics of `serve` (GET /metrics), fed by the events of gateway.observe. Names are prefixed
`ticketgw_`; labels are transports, outcomes, reply codes, event kinds and account names, never addresses.

Gauges that live in the database (the age of the oldest queued outbox mail, the number of quarantined mails)
are read at scrape time, at most once every few seconds (a scraper hammering /metrics costs the database
nothing more).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select

from gateway.models import InboundMail, OutboxMail
from gateway.observe import Delivery, Escalation, ImapPollError, MailDone, SmtpReply, SmtpSession

if TYPE_CHECKING:
    from gateway.app import App

CONTENT_TYPE = CONTENT_TYPE_LATEST
CACHE_SECONDS = 5.0


def store_figures(app: App) -> dict[str, float]:
    """Age in seconds of the oldest queued outbox mail (0: none) and the number of quarantined mails: two
    indexed queries (outbox (status, ...), inbound_mail (outcome))."""
    now = app.clock()
    with app.sessions() as s:
        oldest = s.scalar(select(func.min(OutboxMail.created_at)).where(OutboxMail.status == "queued"))
        quarantined = s.scalar(select(func.count()).select_from(InboundMail)
                               .where(InboundMail.outcome == "quarantined")) or 0
    if oldest is not None and oldest.tzinfo is None:

        oldest = oldest.replace(tzinfo=UTC)
    age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
    return {"outbox_oldest_age": age, "quarantined": float(quarantined)}


class _StoreGauges:
    """A custom collector: the database gauges, cached for CACHE_SECONDS."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._at = 0.0
        self._values: dict[str, float] | None = None

    def values(self) -> dict[str, float] | None:
        with self._lock:
            if self._values is None or time.monotonic() - self._at > CACHE_SECONDS:
                try:
                    self._values = store_figures(self.app)
                except Exception:  # noqa: BLE001 -- the store is down: no figures (healthz says why)
                    self._values = None
                self._at = time.monotonic()
            return self._values

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The names only (the registry asks at registration: no database query then)."""
        yield GaugeMetricFamily("ticketgw_outbox_oldest_age_seconds", "")
        yield GaugeMetricFamily("ticketgw_quarantine_size", "")

    def collect(self) -> Iterator[GaugeMetricFamily]:
        v = self.values()
        if v is None:
            return
        yield GaugeMetricFamily("ticketgw_outbox_oldest_age_seconds",
                                "Age of the oldest outgoing mail still queued (0: none queued)",
                                value=v["outbox_oldest_age"])
        yield GaugeMetricFamily("ticketgw_quarantine_size", "Inbound mails in quarantine (mail list --status "
                                "quarantined)", value=v["quarantined"])


class Metrics:
    def __init__(self, app: App) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.mails = Counter("ticketgw_mails_received", "Inbound mails whose outcome was decided, by transport",
                             ["transport"], registry=r)
        self.outcomes = Counter("ticketgw_mail_outcomes", "Inbound mails by outcome", ["outcome"], registry=r)
        self.latency = Histogram("ticketgw_mail_processing_seconds",
                                 "From storing a mail (the 250) to its ticket or comment",
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 1800), registry=r)
        self.sessions = Counter("ticketgw_smtp_sessions", "SMTP/LMTP sessions opened", ["protocol"], registry=r)
        self.rejections = Counter("ticketgw_smtp_rejections", "4xx/5xx replies to SMTP/LMTP clients, by code",
                                  ["protocol", "code"], registry=r)
        self.notifications = Counter("ticketgw_notifications", "Outgoing mail delivery attempts by result "
                                     "(sent, deferred, failed)", ["result"], registry=r)
        self.escalations = Counter("ticketgw_sla_escalations", "SLA escalations and pending reminders sent, by kind",
                                   ["kind"], registry=r)
        self.imap_errors = Counter("ticketgw_imap_poll_errors", "IMAP connection or poll errors, by account",
                                   ["account"], registry=r)
        for result in ("sent", "deferred", "failed"):
            self.notifications.labels(result)
        r.register(_StoreGauges(app))

    def __call__(self, event: Any) -> None:
        """The sink for gateway.observe events."""
        if isinstance(event, MailDone):
            self.mails.labels(event.transport or "unknown").inc()
            self.outcomes.labels(event.outcome).inc()
            if event.latency is not None:
                self.latency.observe(event.latency)
        elif isinstance(event, Delivery):
            self.notifications.labels(event.result).inc()
        elif isinstance(event, SmtpSession):
            self.sessions.labels(event.protocol).inc()
        elif isinstance(event, SmtpReply):
            self.rejections.labels(event.protocol, event.code).inc()
        elif isinstance(event, Escalation):
            self.escalations.labels(event.kind).inc()
        elif isinstance(event, ImapPollError):
            self.imap_errors.labels(event.account).inc()

    def render(self) -> bytes:
        return bytes(generate_latest(self.registry))

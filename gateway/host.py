"""What a feature needs from the running gateway, as typed protocols: features (gateway.outbound,
gateway.sla, later the HTTP API and the service-desk brokers) are written against these, never against
gateway.app.App or gateway.service.Service, so that no feature imports the composition root or the
service and the core imports no feature.

A feature module offers `install(app: AppHost)` (listed in gateway.app's features: it registers its
listeners in `app.listeners`) and, when it has periodic work in `serve`, `install_service(service:
ServiceHost)` (listed in gateway.service.COMPONENTS). gateway.app.App and gateway.service.Service satisfy
these protocols; mypy checks it where they are passed in.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from gateway.blobs import BlobStore
    from gateway.clock import Clock
    from gateway.config import Config
    from gateway.events import Listeners
    from gateway.observe import Observer
    from gateway.pipeline import Handler


class AppHost(Protocol):
    """The App as a feature sees it: the configuration, the clock, database sessions, event listeners, and
    where log lines and metrics go."""

    @property
    def config(self) -> Config: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def sessions(self) -> sessionmaker[Session]: ...

    @property
    def listeners(self) -> Listeners: ...

    @property
    def observe(self) -> Observer: ...


class IntakeHost(AppHost, Protocol):
    """The App as the core's intake sees it: also the pipeline's handlers and the blob store."""

    @property
    def handlers(self) -> list[tuple[str, Handler]]: ...

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def ahead(self) -> Any: ...  # gateway.prepare.ParseAhead or None: where a mail's CPU work runs (its budget)


class ImapHost(IntakeHost, Protocol):
    """The App as the IMAP poller sees it (gateway.imap): also the disk guard (intake pauses while the data
    directory is nearly full), sender authentication on arrival, and this instance's name (the mailbox's
    lease)."""

    @property
    def disk(self) -> Any: ...  # gateway.guard.diskspace.DiskGuard or None

    @property
    def auth(self) -> Any: ...  # gateway.auth.Authenticator or None

    @property
    def instance(self) -> str: ...


class WriteGateHost(Protocol):
    """The service's database write gate (one SQLite writer at a time; urgent stores go first)."""

    def hold(self, urgent: bool) -> AbstractContextManager[None]: ...


class ServiceHost(Protocol):
    """`serve` as a feature sees it: the App, the configuration, the write gate and periodic jobs."""

    @property
    def app(self) -> AppHost: ...

    @property
    def config(self) -> Config: ...

    @property
    def gate(self) -> WriteGateHost: ...

    def add_job(self, name: str, func: Callable[[], Any], seconds: float, *, start_now: bool = False) -> None: ...


__all__ = ["AppHost", "ImapHost", "IntakeHost", "ServiceHost", "WriteGateHost"]

"""The composition root: builds config, engine, stores and the pipeline once, and passes them in."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from gateway import db, migrate
from gateway.blobs import BlobStore
from gateway.clock import Clock, system_clock
from gateway.config import Config
from gateway.events import Listeners
from gateway.lease import instance_id
from gateway.observe import Observer
from gateway.pipeline import BUILTIN, Handler, load_handlers

if TYPE_CHECKING:
    from gateway.auth import Authenticator
    from gateway.guard.diskspace import DiskGuard
    from gateway.intake import Intake
    from gateway.prepare import ParseAhead


@dataclass
class App:
    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    blobs: BlobStore
    clock: Clock
    handlers: list[tuple[str, Handler]]
    listeners: Listeners = field(default_factory=list)
    disk: DiskGuard | None = None  # intake pauses while the data directory is full
    auth: Authenticator | None = None  # sender authentication on arrival
    observe: Observer = field(default_factory=Observer)  # log lines and metrics (gateway.observe)
    instance: str = field(default_factory=instance_id)  # this process among all sharing the database (leases)
    ahead: ParseAhead | None = None  # the preparation worker (serve starts one), or None

    def intake(self) -> Intake:
        from gateway.intake import Intake

        return Intake(self)

    def upgrade_db(self) -> tuple[str | None, str]:
        return migrate.upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def build_app(config: Config, *, clock: Clock = system_clock, pipeline: Sequence[str] = BUILTIN,
              engine: Engine | None = None) -> App:
    if engine is None:
        engine = db.make_engine(config.database_url, busy_timeout_ms=config.get("database", "busy_timeout_ms"),
                                pool_size=config.get("database", "pool_size"))
    app = App(config=config, engine=engine, sessions=db.session_factory(engine),
              blobs=BlobStore(config.attachments_dir), clock=clock, handlers=load_handlers(pipeline))
    from gateway.auth import Authenticator
    from gateway.guard.diskspace import DiskGuard

    for warning in config.warnings:  # deprecated keys: said once per start
        logging.getLogger("gateway").warning("config: %s", warning)
    app.disk = DiskGuard.for_config(config)
    app.auth = Authenticator(config)
    for install in _FEATURES:
        install(app)
    return app


def _install_features() -> list[Callable[[App], None]]:
    """Features that listen to ticket events (notifications, SLA) register themselves here."""
    features: list[Callable[[App], None]] = []
    from gateway.sla import install as install_sla

    features.append(install_sla)
    from gateway.outbound import install as install_outbound

    features.append(install_outbound)
    from gateway.backends import install as install_backend

    features.append(install_backend)
    return features


_FEATURES = _install_features()

"""Brokering tickets to an external service desk (issue 18): Jira Service Management, Zammad, OpenText SMAX.

A feature like gateway.outbound: `install(app)` (listed in gateway.app's features) registers the listener that
queues pushes in the transaction of every ticket change; `install_service(service)` (in gateway.service's
COMPONENTS) runs the broker in `serve`. The core imports nothing from here.

* :mod:`gateway.backends.settings` the [backend] section
* :mod:`gateway.backends.store`    tables (migration 0005_backends)
* :mod:`gateway.backends.queue`    the listener and the durable push queue
* :mod:`gateway.backends.broker`   delivery to the desk, polling and re-reading it
* :mod:`gateway.backends.sync`     applying the desk's comments and statuses locally
* :mod:`gateway.backends.webhook`  the webhook doorbell (`handle_webhook`)
* :mod:`gateway.backends.desk`     the adapter interface, errors and HTTP client (httpx, async);
  :mod:`~gateway.backends.jira`, :mod:`~gateway.backends.zammad`, :mod:`~gateway.backends.smax` the desks

In `serve` the broker is an asyncio task on the service's loop: the desk is talked to with httpx's
AsyncClient (a slow desk holds no thread, and the task is cancelled at shutdown -- a thread could not be), and
every database step is a short transaction in the service's thread pool, behind its write gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from gateway.backends.lookup import broker_settings, desk_class
from gateway.backends.webhook import WebhookResult, handle_webhook

if TYPE_CHECKING:
    import httpx

    from gateway.backends.broker import Broker
    from gateway.backends.settings import Settings

__all__ = ["install", "install_service", "handle_webhook", "WebhookResult", "broker_settings", "desk_class",
           "open_broker"]

log = logging.getLogger("gateway.backends")


def install(app: Any) -> None:
    from gateway.backends.queue import Enqueue
    from gateway.backends.settings import load

    settings = load(app.config)
    if settings is None:
        return
    app.listeners.append(Enqueue(settings, app.clock))


def client(settings: Settings) -> httpx.AsyncClient:
    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request is noise (and names every URL)
    return httpx.AsyncClient(timeout=settings.timeout, follow_redirects=False,
                             limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
                             headers={"User-Agent": "ticket-gateway"})


@contextlib.asynccontextmanager
async def open_broker(app: Any, run: Any = None) -> AsyncIterator[Broker]:
    from gateway.backends.broker import Broker

    settings = broker_settings(app)
    if settings is None:
        raise RuntimeError("no [backend] configured (kind = 'builtin')")
    async with client(settings) as c:
        yield Broker(app, settings, desk_class(settings.kind)(settings, c), run=run)


def install_service(service: Any) -> None:
    """Component for gateway.service: the broker as an asyncio task of `serve`."""
    settings = broker_settings(service.app)
    if settings is None:
        return

    async def run_db(fn: Any, *args: Any) -> Any:
        def gated() -> Any:
            with service.gate.hold(urgent=False):
                return fn(*args)
        return await service.run_sync(gated)

    async def task(svc: Any) -> None:
        async with open_broker(svc.app, run=run_db) as broker:
            await serve_loop(broker, svc.stopping)

    service.add_task(f"backend {settings.name}", task)


async def serve_loop(broker: Broker, stopping: asyncio.Event) -> None:
    """Deliver what is due, answer doorbells, poll every poll_seconds -- until `stopping`. Never exits on errors."""
    from gateway.backends.desk import DeskError
    from gateway.db import StoreUnavailable

    s = broker.settings
    next_poll = 0.0
    failures = 0
    while not stopping.is_set():
        try:
            await broker.deliver_due()
            await broker.ring()
            if time.monotonic() >= next_poll:
                await broker.poll()
                next_poll = time.monotonic() + s.poll_seconds
            failures = 0
        except (DeskError, StoreUnavailable) as e:
            failures += 1
            log.warning("backend %s: %s", s.name, e)
            next_poll = time.monotonic() + min(s.poll_seconds * 2 ** min(failures, 5), s.retry_max)
        except Exception:  # noqa: BLE001 -- the loop must go on
            failures += 1
            log.exception("backend %s: round failed", s.name)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), s.deliver_seconds)

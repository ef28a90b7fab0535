"""The HTTP listener of `serve`: the JSON API (/api/v1, gateway.api.routes), GET /healthz and GET /metrics.

`install_service` is a component of gateway.service (COMPONENTS): it binds `[http] listen` at start (a taken
port stops the start like an SMTP listener's), counts the service's events into Prometheus metrics, and runs
uvicorn on the service's loop as a task that ends when the service stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("gateway.api")

# healthz: an oldest queued outgoing mail older than this makes the gateway unhealthy
OUTBOX_AGE_LIMIT = 3600.0
# healthz: an IMAP account not connected this long after start (or since it went down) is unhealthy
IMAP_GRACE = 60.0


def install_service(service: Any) -> None:
    """Component for gateway.service (COMPONENTS entry "gateway.api:install_service")."""
    listen = service.config.get("http", "listen")
    if not listen:
        log.info("http: off ([http] listen is empty)")
        return
    from gateway.api import routes
    from gateway.api.app import Api
    from gateway.api.server import bind, make_server, where
    from gateway.config import http_address
    from gateway.metrics import CONTENT_TYPE, Metrics

    host, port = http_address(listen)
    sock = bind(host, port)
    app = service.app
    metrics = Metrics(app)
    app.observe.sinks.append(metrics)
    started = time.monotonic()

    async def health() -> dict[str, Any]:
        return await asyncio.get_running_loop().run_in_executor(api.pool, health_report, service, started)

    async def render() -> tuple[bytes, str]:
        return await asyncio.get_running_loop().run_in_executor(api.pool, metrics.render), CONTENT_TYPE

    ops = routes.operations(metrics_scope="read" if app.config.values["http"]["metrics_token"] else None)
    api = Api(app, ops=ops, schemas=routes.SCHEMAS, gate=service.gate, health=health, metrics=render,
              verbose=service.verbose)
    cfg = service.config.values["http"]
    server = make_server(api.asgi, max_connections=cfg["max_connections"],
                         head_timeout=cfg["request_timeout_seconds"], verbose=service.verbose)
    service.http_where = where(sock)
    service.http_api = api
    log.info("http: listening on %s (API %s/api/v1, /healthz, /metrics%s)", service.http_where, service.http_where,
             " with a token" if cfg["metrics_token"] else "")

    async def run(svc: Any) -> None:
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        stopping = asyncio.ensure_future(svc.stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            stopping.cancel()
            try:
                await task
            finally:
                sock.close()
                api.close()
                if metrics in app.observe.sinks:
                    app.observe.sinks.remove(metrics)
        log.info("http: stopped")

    service.add_task("http", run)


def health_report(service: Any, started: float) -> dict[str, Any]:
    """What /healthz answers: every check with its figures, and the reasons it is not ok (none: healthy)."""
    from sqlalchemy import text

    from gateway.metrics import store_figures

    app = service.app
    reasons: list[str] = []
    checks: dict[str, Any] = {}
    try:
        with app.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = {"ok": True, "dialect": app.engine.dialect.name}
        figures = store_figures(app)
    except Exception as e:  # noqa: BLE001
        checks["database"] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        reasons.append(f"database unreachable: {type(e).__name__}")
        figures = None
    listeners = [{"where": li.where, "ok": bool(li.server.is_serving())} for li in service.listeners]
    checks["listeners"] = listeners
    for li in listeners:
        if not li["ok"]:
            reasons.append(f"listener {li['where']} is not serving")
    if service.registry is not None and service.registry.closing:
        reasons.append("shutting down")
    states = app.observe.snapshot()
    accounts = []
    from gateway.imap import accounts as imap_accounts

    up_for = time.monotonic() - started
    for a in imap_accounts(service.config):
        st = states.get(f"imap {a.name}")
        ok = bool(st and st.ok)
        accounts.append({"name": a.name, "connected": ok and bool(st and st.extra.get("role") != "standby"),
                         "role": st.extra.get("role", "poller") if st else "starting",
                         "detail": st.detail if st else "not connected yet"})
        if (st is None and up_for > IMAP_GRACE) or (st is not None and not st.ok):
            reasons.append(f"IMAP account {a.name} not connected" + (f": {st.detail}" if st else ""))
    checks["imap"] = accounts
    relay = states.get("outgoing mail")
    checks["outgoing_mail"] = {"ok": relay.ok if relay else True, "detail": relay.detail if relay else ""}
    if relay is not None and not relay.ok:
        reasons.append(f"outgoing mail unavailable: {relay.detail}")
    if figures is not None:
        checks["outbox"] = {"oldest_queued_age_seconds": round(figures["outbox_oldest_age"], 1)}
        checks["quarantine"] = {"count": int(figures["quarantined"])}
        if figures["outbox_oldest_age"] > OUTBOX_AGE_LIMIT:
            reasons.append(f"outbox: the oldest queued mail has waited {figures['outbox_oldest_age'] / 60:.0f} min")
    return {"status": "unavailable" if reasons else "ok", "reasons": reasons, "checks": checks}

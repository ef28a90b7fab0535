"""The ASGI application: Starlette routing over the operations declared in gateway.api.routes, with token
authentication, a per-address limit on failed attempts, request limits, RFC 9457 errors and an access line
per request (never the token).

Handlers run the shared operations (gateway.ops) in a small thread pool of their own, so the API never takes
the threads that store and thread mail; writes go through the service's database write gate as non-urgent
work (a store batch, whose senders wait for their 250, always goes first).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway.api import spec
from gateway.db import StoreUnavailable, is_unavailable
from gateway.ops.errors import OpError
from gateway.ops.pages import Page

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.ops.tokens import Principal

log = logging.getLogger("gateway.api")
PREFIX = "/api/v1"
PROBLEM_BASE = "urn:ticket-gateway:problem:"
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; sandbox"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class Problem(Exception):
    """An error answer of the API layer itself (auth, limits, malformed input)."""

    def __init__(self, status: int, title: str, detail: str = "", *, kind: str = "",
                 errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.kind = kind or title.lower().replace(" ", "-")
        self.errors = errors
        self.headers = headers or {}


def problem_response(status: int, title: str, detail: str = "", *, kind: str = "", instance: str = "",
                     errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None) -> Response:
    body: dict[str, Any] = {"type": PROBLEM_BASE + (kind or title.lower().replace(" ", "-")), "title": title,
                            "status": status}
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return Response(json.dumps(body, ensure_ascii=False), status_code=status, headers=headers,
                    media_type="application/problem+json")


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), status_code=status, headers=headers,
                    media_type="application/json")


# Limits --------------------------------------------------------------------------------------------------------
class BodyTooLarge(Exception):
    pass


class BodyTooSlow(Exception):
    pass


class Limits:
    """ASGI middleware: body size (JSON and multipart limits apart) and the time a body may take to arrive;
    security headers on every response."""

    def __init__(self, inner: Any, *, max_body: int, max_upload: int, timeout: float) -> None:
        self.inner, self.max_body, self.max_upload, self.timeout = inner, max_body, max_upload, timeout

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.inner(scope, receive, send)
            return
        ctype = b""
        for k, v in scope.get("headers", []):
            if k == b"content-type":
                ctype = v.lower()
        limit = self.max_upload if ctype.startswith(b"multipart/") else self.max_body
        scope["tg.body_limit"] = limit
        deadline = time.monotonic() + self.timeout
        got = 0

        async def limited() -> Any:
            nonlocal got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BodyTooSlow()
            try:
                message = await asyncio.wait_for(receive(), remaining)
            except TimeoutError:
                raise BodyTooSlow() from None
            if message.get("type") == "http.request":
                got += len(message.get("body", b""))
                if got > limit:
                    raise BodyTooLarge()
            return message

        async def secured(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + SECURITY_HEADERS
            await send(message)

        await self.inner(scope, limited, secured)


class FailureLimiter:
    """Failed token attempts per client address: at most `per_minute` in any minute; then 429 (even for a
    right token) until the oldest failure is a minute old. Bounded: the least recently failing addresses are
    forgotten beyond `max_clients`."""

    def __init__(self, per_minute: int, *, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.max_clients = max_clients
        self.clock = clock
        self.failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked_for(self, client: str) -> float:
        """Seconds until this address may try again (0: now)."""
        q = self.failures.get(client)
        if q is None:
            return 0.0
        now = self.clock()
        while q and now - q[0] >= 60:
            q.popleft()
        if not q:
            del self.failures[client]
            return 0.0
        return 60 - (now - q[0]) if len(q) >= self.per_minute else 0.0

    def failed(self, client: str) -> None:
        q = self.failures.get(client)
        if q is None:
            q = self.failures[client] = deque(maxlen=self.per_minute)
            while len(self.failures) > self.max_clients:
                self.failures.popitem(last=False)
        else:
            self.failures.move_to_end(client)
        q.append(self.clock())


# The application -----------------------------------------------------------------------------------------------
@dataclass
class Call:
    """One request to one operation: what the handler needs."""

    api: Api
    request: Request
    op: spec.Op
    principal: Principal | None = None
    path: dict[str, Any] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    files: list[tuple[str, str, bytes]] = field(default_factory=list)

    @property
    def app(self) -> App:
        return self.api.app

    async def run(self, fn: Callable[..., Any], *args: Any, write: bool = False, **kw: Any) -> Any:
        """A blocking operation in the API's threads; writes hold the write gate (non-urgent)."""
        gate = self.api.gate

        def work() -> Any:
            if write and gate is not None:
                with gate.hold(urgent=False):
                    return fn(*args, **kw)
            return fn(*args, **kw)

        return await asyncio.get_running_loop().run_in_executor(self.api.pool, work)

    def page(self, page: Page) -> Response:
        headers = {}
        if page.next_cursor:
            q = {k: v for k, v in self.request.query_params.items() if k != "cursor"}
            q["cursor"] = page.next_cursor
            headers["Link"] = f'<{quote(self.request.url.path)}?{urlencode(q)}>; rel="next"'
        return json_response(page.as_dict(), headers=headers)


class Api:
    """`ops` and `schemas`: the operations and their schemas (gateway.api.routes, which uses this module's
    helpers; passed in by gateway.api.install_service, so that the two modules do not import each other)."""

    def __init__(self, app: App, *, ops: list[spec.Op], schemas: dict[str, spec.Schema], gate: Any = None,
                 health: Callable[[], Any] | None = None, metrics: Callable[[], Any] | None = None,
                 threads: int = 4, verbose: bool = False) -> None:
        self.app = app
        self.cfg = app.config.values["http"]
        self.gate = gate
        self.health = health
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="http")
        self.limiter = FailureLimiter(self.cfg["auth_failures_per_minute"])
        self._touched: dict[int, float] = {}
        self.ops = ops
        self.schemas = schemas
        self._doc: dict[str, Any] | None = None
        by_path: dict[str, dict[str, spec.Op]] = {}
        for op in self.ops:
            by_path.setdefault(self.full_path(op), {})[op.method] = op
        starlette = Starlette(routes=[Route(p, self._endpoint(methods), methods=list(methods))
                                      for p, methods in by_path.items()],
                              exception_handlers={HTTPException: self._http_error, Exception: self._crash})
        self.asgi = Limits(starlette, max_body=self.cfg["max_body_bytes"], max_upload=self.cfg["max_upload_bytes"],
                           timeout=self.cfg["request_timeout_seconds"])

    @staticmethod
    def full_path(op: spec.Op) -> str:
        return spec.full_path(op, PREFIX)

    def document(self) -> dict[str, Any]:
        if self._doc is None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                v = version("ticket-gateway")
            except PackageNotFoundError:  # pragma: no cover -- running from a source tree
                v = "0"
            self._doc = spec.openapi(self.ops, self.schemas, version=v, prefix=PREFIX)
        return self._doc

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # Errors ------------------------------------------------------------------------------------------------
    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {404: "Not found", 405: "Method not allowed"}
        headers = dict(exc.headers or {})
        return problem_response(exc.status_code, titles.get(exc.status_code, "HTTP error"), str(exc.detail),
                                instance=request.url.path, headers=headers)

    async def _crash(self, request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc, exc_info=exc)
        return problem_response(500, "Internal error", "see the gateway's log", instance=request.url.path)

    # Authentication ----------------------------------------------------------------------------------------
    async def authenticate(self, request: Request, scope: str) -> Principal:
        from gateway.ops.tokens import authenticate

        client = request.client.host if request.client else "-"
        wait = self.limiter.blocked_for(client)
        if wait > 0:
            raise Problem(429, "Too many requests", "too many failed token attempts from this address",
                          headers={"Retry-After": str(int(wait) + 1)})
        header = request.headers.get("authorization", "")
        kind, _, secret = header.partition(" ")
        if kind.lower() != "bearer" or not secret.strip():
            raise Problem(401, "Unauthorized", "send Authorization: Bearer <token>",
                          headers={"WWW-Authenticate": 'Bearer realm="ticket-gateway"'})
        principal = await asyncio.get_running_loop().run_in_executor(self.pool, authenticate, self.app,
                                                                     secret.strip())
        if principal is None:
            self.limiter.failed(client)
            log.warning("api: refused a token from %s (%s %s)", client, request.method, request.url.path)
            raise Problem(401, "Unauthorized", "unknown or revoked token",
                          headers={"WWW-Authenticate": 'Bearer realm="ticket-gateway", error="invalid_token"'})
        if not principal.allows(scope):
            challenge = f'Bearer error="insufficient_scope", scope="{scope}"'
            raise Problem(403, "Forbidden", f"token {principal.name!r} has scope {principal.scope}; this needs "
                          f"{scope}", headers={"WWW-Authenticate": challenge})
        last = self._touched.get(principal.token_id, 0.0)
        if time.monotonic() - last > 60:
            from gateway.ops.tokens import touch

            self._touched[principal.token_id] = time.monotonic()
            asyncio.get_running_loop().run_in_executor(self.pool, self._touch, touch, principal.token_id)
        return principal

    def _touch(self, touch: Callable[[Any, int], None], token_id: int) -> None:
        try:
            if self.gate is not None:
                with self.gate.hold(urgent=False):
                    touch(self.app, token_id)
            else:
                touch(self.app, token_id)
        except Exception as e:  # noqa: BLE001 -- bookkeeping only
            log.debug("api: could not note the token's use: %s", e)

    # Dispatch ----------------------------------------------------------------------------------------------
    def _endpoint(self, methods: dict[str, spec.Op]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            op = methods.get(request.method)
            if op is None:
                raise HTTPException(405, headers={"Allow": ", ".join(methods)})
            return await self.handle(request, op)

        return endpoint

    async def handle(self, request: Request, op: spec.Op) -> Response:
        started = time.perf_counter()
        call = Call(self, request, op)
        try:
            if op.scope is not None:
                call.principal = await self.authenticate(request, op.scope)
            self._params(call)
            await self._body(call)
            response: Response = await op.handler(call)
        except Problem as p:
            response = problem_response(p.status, p.title, p.detail, kind=p.kind, instance=request.url.path,
                                        errors=p.errors, headers=p.headers)
        except OpError as e:
            errors = [{"field": e.field, "detail": e.detail}] if e.field else None
            response = problem_response(e.status, e.title, e.detail, kind=e.kind, instance=request.url.path,
                                        errors=errors)
        except BodyTooLarge:
            response = problem_response(413, "Request body too large",
                                        f"at most {request.scope.get('tg.body_limit')} bytes",
                                        headers={"Connection": "close"})
        except BodyTooSlow:
            response = problem_response(408, "Request timeout", "the body did not arrive in time",
                                        headers={"Connection": "close"})
        except Exception as e:  # noqa: BLE001
            if not is_unavailable(e) and not isinstance(e, StoreUnavailable):
                raise
            self.app.observe.state("database", False, f"{type(e).__name__}: {e}")
            response = problem_response(503, "Service unavailable", "the store is unavailable; try again later",
                                        headers={"Retry-After": "30"})
        level = logging.DEBUG if op.path in ("/healthz", "/metrics") and response.status_code < 400 else logging.INFO
        ms = (time.perf_counter() - started) * 1000
        who = call.principal.name if call.principal else "-"
        client = request.client.host if request.client else "-"
        log.log(level, "%s %s %s %.0fms client=%s token=%s", request.method, request.url.path,
                response.status_code, ms, client, who,
                extra={"tg": {"method": request.method, "path": request.url.path, "status": response.status_code,
                              "ms": round(ms, 1), "client": client, "token": who}})
        return response

    def _params(self, call: Call) -> None:
        op = call.op
        errors: list[dict[str, str]] = []
        for name, raw in call.request.path_params.items():
            s = spec._path_schema(op, name)
            value, err = _convert(str(raw), s)
            if err:
                raise Problem(404, "Not found", f"{name}: {err}")
            call.path[name] = value
        known = {p.name: p for p in op.params if p.where == "query"}
        for name, raw in call.request.query_params.items():
            p = known.get(name)
            if p is None:
                errors.append({"field": name, "detail": "unknown query parameter"})
                continue
            value, err = _convert(raw, p.schema)
            if err is None:
                problems = spec.validate(value, p.schema, self.schemas, name)
                err = problems[0][1] if problems else None
            if err:
                errors.append({"field": name, "detail": err})
            else:
                call.query[name] = value
        if errors:
            raise Problem(422, "Invalid value", "; ".join(f"{e['field']}: {e['detail']}" for e in errors),
                          kind="invalid", errors=errors)

    async def _body(self, call: Call) -> None:
        op = call.op
        if op.body is None and op.form is None:
            return
        request = call.request
        length = request.headers.get("content-length")
        limit = request.scope.get("tg.body_limit", self.cfg["max_body_bytes"])
        if length is not None and length.isdigit() and int(length) > limit:
            raise BodyTooLarge()
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        schema = op.body
        if op.form is not None and ctype == "multipart/form-data":
            await self._form(call)
            schema = op.form
        elif op.body is not None and (ctype == "application/json" or ctype.endswith("+json")):
            raw = await request.body()
            try:
                call.body = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." nested too deep
                raise Problem(400, "Bad request", "the body is not JSON (or nested too deeply)",
                              kind="bad-request") from None
        else:
            want = " or ".join(m for m, s in (("application/json", op.body), ("multipart/form-data", op.form)) if s)
            raise Problem(415, "Unsupported media type", f"send {want}", kind="unsupported-media-type")
        assert schema is not None
        errors = spec.validate(call.body, schema, self.schemas)
        if errors:
            raise Problem(422, "Invalid value", "; ".join(f"{f}: {m}" for f, m in errors), kind="invalid",
                          errors=[{"field": f, "detail": m} for f, m in errors])

    async def _form(self, call: Call) -> None:
        from starlette.datastructures import UploadFile

        from gateway.ops.tickets import MAX_ATTACHMENTS

        try:
            form = await call.request.form(max_files=MAX_ATTACHMENTS, max_fields=20,
                                           max_part_size=self.cfg["max_body_bytes"])
        except HTTPException as e:
            raise Problem(e.status_code if e.status_code >= 400 else 400, "Bad request", str(e.detail),
                          kind="bad-request") from None
        body: dict[str, Any] = {}
        form_schema = call.op.form or {}
        if "$ref" in form_schema:
            form_schema = self.schemas[form_schema["$ref"].rsplit("/", 1)[1]]
        schema_props = form_schema.get("properties", {})
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                call.files.append((value.filename or "", value.content_type or "", data))
                await value.close()
                continue
            prop = schema_props.get(key, {})
            converted, err = _convert(value, prop) if prop else (value, None)
            if err:
                raise Problem(422, "Invalid value", f"{key}: {err}", kind="invalid",
                              errors=[{"field": key, "detail": err}])
            body[key] = converted
        call.body = body


def _convert(raw: str, schema: spec.Schema) -> tuple[Any, str | None]:
    types = spec._types(schema)
    if "integer" in types:
        try:
            return int(raw), None
        except ValueError:
            return None, "must be an integer"
    if "boolean" in types:
        if raw.lower() in ("true", "1", "yes"):
            return True, None
        if raw.lower() in ("false", "0", "no"):
            return False, None
        return None, "must be true or false"
    return raw, None


def parse_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))

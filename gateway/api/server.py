"""The HTTP server inside `serve`: uvicorn's `Server` on the service's own asyncio loop (no second process, no
signal handlers of its own: SIGTERM stops it with the rest), with guards uvicorn lacks.

Why Starlette on uvicorn (bench/bench_http_choice.py, same run, 2-core machine, 6,000 requests over 8 keep-alive
connections): framework imports 0.05 s and +9 MiB RSS over a bare asyncio process, against aiohttp's 0.12 s and
+17 MiB and FastAPI's 0.18 s and +25 MiB (pydantic); 6,500 requests/s with uvicorn's pure-Python h11 parser
(aiohttp 15,400, a bare asyncio protocol 30,000): a gateway's API serves scripts and scrapes, so start-up
and memory of the mail service weigh more than a request rate far above any use.

Guards (every one tested): the listening socket is made with proto IPPROTO_TCP so that asyncio sets
TCP_NODELAY (without it every response waits 40 ms for the client's delayed ACK); a connection must deliver
a request's head within `request_timeout_seconds` of its start or of the previous response (uvicorn arms no
timer before the first request and none while a head trickles in: a slowloris would hold the connection
forever); at most `max_connections` at once (uvicorn answers 503 beyond); request bodies are limited and timed
in gateway.api.app.Limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("gateway.api")

TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 16\r\n"
                    b"connection: close\r\n\r\nrequest timeout\n")


class GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request head."""

    head_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout, self._head_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_head_timer", None)
        if timer is not None:
            timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:  # still waiting for (the rest of) a head
            with contextlib.suppress(Exception):
                self.transport.write(TIMEOUT_RESPONSE)
            self.transport.close()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request head arrived: the app's own limits take over
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


class EmbeddedServer(uvicorn.Server):
    """uvicorn's Server without its signal handling (the service owns SIGTERM/SIGINT/SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound now, so that `serve` fails at start when the address is taken)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def make_server(asgi: Any, *, max_connections: int, head_timeout: float, verbose: bool = False) -> EmbeddedServer:
    protocol = type("Guarded", (GuardedH11,), {"head_timeout": float(head_timeout)})
    config = uvicorn.Config(asgi, http=protocol, lifespan="off", access_log=False, log_config=None,
                            log_level=logging.DEBUG if verbose else logging.WARNING, loop="none",
                            limit_concurrency=max_connections, timeout_keep_alive=5,
                            timeout_graceful_shutdown=3, server_header=False, date_header=True,
                            h11_max_incomplete_event_size=16 * 1024)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    return EmbeddedServer(config)


def where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

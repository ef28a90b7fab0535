"""SMTP and LMTP listeners (aiosmtpd) inside the service's own asyncio loop.

One rule above all: `250` only after `Intake.store()` committed the raw mail. Threading into tickets happens
after the answer, from the stored mail (the service's workers call `Intake.process`). Anything that goes
wrong on our side -- database down, disk full, a bug -- answers `451 4.3.0` so the sending MTA tries again;
never a 5xx that would bounce a customer's mail.

DATA (our own reader, `read_data`, with aiosmtpd's wire rules) reads in pieces up to each `.` CRLF
(`readuntil(b".\\r\\n")`, not one await per line) and ends only on a `.` line between two CRLFs, so a bare LF
(`\\n.\\n`, `\\r\\n.\\n`, `\\n.\\r\\n`) never ends a mail early and the bytes after it never become commands: SMTP
smuggling cannot create a second message (tests/integration/test_smtp.py checks this with raw sockets, and the
piece reader against a line-at-a-time reader on random streams).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from aiosmtpd.smtp import Envelope as SMTPEnvelope
from aiosmtpd.smtp import Session as SMTPSession

from gateway.config import Config, ConfigError
from gateway.guard import connlimits
from gateway.guard.connlimits import ConnLimits
from gateway.guard.diskspace import INSUFFICIENT, DiskGuard
from gateway.intake import Envelope
from gateway.routing import route_for  # noqa: F401 -- kept importable from here

log = logging.getLogger("gateway.smtp")

DEFAULT_PORTS = {"smtp": 2525, "lmtp": 2424}
DEFAULT_LISTENERS: tuple[dict[str, Any], ...] = (
    {"protocol": "smtp", "host": "127.0.0.1", "port": 2525, "path": "", "socket_mode": "0660", "tls_cert": "",
     "tls_key": "", "require_starttls": False},
    {"protocol": "lmtp", "host": "127.0.0.1", "port": 2424, "path": "", "socket_mode": "0660", "tls_cert": "",
     "tls_key": "", "require_starttls": False},
)

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
# Lines longer than this inside DATA are refused after the DATA (aiosmtpd: 500) and never split into commands.
# RFC 5321 says 1000; real mail from broken generators is longer, Postfix itself wraps at 999.
LINE_LIMIT = 64 * 1024
# per-session budgets for commands that carry no mail (aiosmtpd answers 421 and closes when spent)
CALL_LIMITS = {"NOOP": 100, "HELP": 20, "VRFY": 20, "EXPN": 20, "*": 100_000}


StoreFn = Callable[[bytes, Envelope], Awaitable[int]]
AuthFn = Callable[[bytes, Envelope], Awaitable[Envelope]]


def listener_specs(config: Config) -> list[dict[str, Any]]:
    """The configured [[listen]] tables (defaults filled in), else the two loopback defaults."""
    specs = [dict(t) for t in (config.values.get("listen") or [])] or [dict(t) for t in DEFAULT_LISTENERS]
    for i, t in enumerate(specs):
        for k in ("path", "tls_cert", "tls_key"):
            if t[k]:
                t[k] = str(config.base_dir / os.path.expanduser(t[k]))  # relative to the config file
        if t["port"] is None:  # left out: the protocol's default; 0 means any free port, as everywhere
            t["port"] = DEFAULT_PORTS[t["protocol"]]
        if bool(t["tls_cert"]) != bool(t["tls_key"]):
            raise ConfigError(f"listen[{i}].tls_key: tls_cert and tls_key go together")
        if t["require_starttls"] and not t["tls_cert"]:
            raise ConfigError(f"listen[{i}].require_starttls: needs tls_cert and tls_key")
    return specs


class SessionRegistry:
    """Live SMTP/LMTP sessions over all listeners: the concurrency cap, the per-client limit and the stress
    timeouts (gateway.guard.connlimits), and graceful shutdown."""

    def __init__(self, limit: int, conn: ConnLimits | None = None) -> None:
        self.limit = limit
        self.conn = conn
        self.live: set[_Sessions] = set()
        self.per_client: dict[str, int] = {}
        self.stress = False
        self.refused_by_client = 0   # sessions refused by the per-client limit (statistics, tests)
        self.closing = False
        self.changed = asyncio.Event()
        self.observe: Callable[[Any], None] | None = None  # gateway.observe.Observer: sessions, 4xx/5xx codes

    def note(self, event: Any) -> None:
        if self.observe is not None:
            self.observe(event)

    def refused(self, protocol: str, line: str) -> None:
        """A 4xx/5xx reply was said (counted by code)."""
        if self.observe is not None and line[:1] in ("4", "5"):
            from gateway.observe import SmtpReply

            self.observe(SmtpReply(protocol, line[:3]))

    def full(self) -> bool:
        return len(self.live) >= self.limit

    def refusal(self, client: str | None) -> str | None:
        """The reply for a new session from `client` over its limit, or None."""
        if self.conn is None or client is None:
            return None
        why = connlimits.refuse(self.conn, client, self.per_client.get(client, 0))
        if why is not None:
            self.refused_by_client += 1
        return why

    def idle_timeout(self, normal: float) -> float:
        if self.conn is None:
            return normal
        return min(normal, connlimits.idle_timeout(self.conn, len(self.live)))

    def add(self, s: _Sessions) -> None:
        self.live.add(s)
        client = getattr(s, "_client", None)
        if client is not None:
            self.per_client[client] = self.per_client.get(client, 0) + 1
        if self.conn is not None and not self.stress and connlimits.stressed(self.conn, len(self.live)):
            self.stress = True
            log.warning("%d sessions: under stress, idle sessions are closed after %ss", len(self.live),
                        self.conn.stress_idle_seconds)
            for other in list(self.live):
                other.rearm()

    def discard(self, s: _Sessions) -> None:
        if s in self.live:
            self.live.discard(s)
            client = getattr(s, "_client", None)
            if client is not None:
                left = self.per_client.get(client, 1) - 1
                if left > 0:
                    self.per_client[client] = left
                else:
                    self.per_client.pop(client, None)
        if self.stress and self.conn is not None and not connlimits.stressed(self.conn, len(self.live)):
            self.stress = False
            log.info("%d sessions: stress is over", len(self.live))
        self.changed.set()

    def close_idle(self) -> int:
        """Say 421 to sessions between mails and close them; sessions inside a mail transaction go on."""
        n = 0
        for s in list(self.live):
            if s.idle():
                s.goodbye("421 4.3.2 Service shutting down, please try again later")
                n += 1
        return n

    def in_transaction(self) -> bool:
        """Some session is inside a mail (MAIL FROM given, DATA not answered yet)."""
        return any(s.envelope is not None and s.envelope.mail_from is not None for s in list(self.live))

    def abort_all(self) -> None:
        for s in list(self.live):
            if isinstance(s.transport, asyncio.Transport):  # plain or TLS: both are
                s.transport.abort()


class _Refuse(asyncio.Protocol):
    """Answers a connection over the session cap and closes it."""

    def __init__(self, registry: SessionRegistry | None = None, protocol: str = "smtp") -> None:
        if registry is not None:
            registry.refused(protocol, "421")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.7.0 Too many connections, please try again later\r\n")
        transport.close()


class _Sessions(SMTP):
    """aiosmtpd's SMTP (and, mixed with LMTP, its LMTP) with the registry, the idle timer reset on every byte
    and a hard session deadline.

    What aiosmtpd offers as public extension points is used as such: the handler's hooks (`Handler`) decide
    every answer about a mail (MAIL, RCPT, DATA: store, then 250, or 451), `smtp_DATA` is overridden the way
    aiosmtpd's documentation describes for commands (`smtp_<COMMAND>`), and the asyncio protocol methods
    (connection_made/lost, data_received, eof_received) wrap aiosmtpd's. Its private members are used only
    where aiosmtpd has no hook: the stream reader and writer (DATA is read in pieces, see `read_data`) and the
    idle timer (`_reset_timeout`, `_timeout_cb`: shorter under stress, a 421 said before closing)."""

    line_length_limit = LINE_LIMIT
    registry: SessionRegistry
    max_seconds: float  # limits.session_max_seconds
    idle_seconds: float  # limits.session_idle_seconds (the timeout aiosmtpd is given)
    _client: str | None = None
    _registered = False
    _refused = False
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = not self._registered
        if first:
            self._client = connlimits.client_key(transport.get_extra_info("peername"))
            why = self.registry.refusal(self._client)
            if why is not None:  # over this client's limit: this session only, nobody else's
                self._refused = True
                log.info("%s: over limits.max_sessions_per_client, refused", self._client)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(why.encode("ascii") + b"\r\n")
                transport.close()
                return
        super().connection_made(transport)
        if first:
            self._registered = True
            self.registry.add(self)
            self._deadline = self.loop.call_later(self.max_seconds, self._session_too_long)
            if self.registry.observe is not None:
                from gateway.observe import SmtpSession

                self.registry.note(SmtpSession(self.protocol_name))

    @property
    def protocol_name(self) -> str:
        return "lmtp" if isinstance(self, LMTP) else "smtp"

    @property
    def peer(self) -> Any:
        return self.session.peer if self.session is not None else None

    async def push(self, status: AnyStr) -> None:
        line = status.decode("ascii", "replace") if isinstance(status, bytes) else str(status)
        if line[:1] in ("4", "5"):
            self.registry.refused(self.protocol_name, line)
        await super().push(status)

    def connection_lost(self, error: Exception | None) -> None:
        if self._refused:
            return
        self.registry.discard(self)
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self.transport is not None:
            self._reset_timeout()  # idle means no bytes, also inside DATA

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        return super().eof_received()

    def _reset_timeout(self, duration: float | None = None) -> None:
        """aiosmtpd's idle timer, shortened while the service is under stress (gateway.guard.connlimits)."""
        super()._reset_timeout(duration or self.registry.idle_timeout(self.idle_seconds))

    def rearm(self) -> None:
        """The idle timer again from now, with the timeout that holds now (the service came under stress)."""
        if self.transport is not None:
            self._reset_timeout()

    def _timeout_cb(self) -> None:
        log.info("%r idle for too long: closing", self.peer)
        self.goodbye("421 4.4.2 Idle for too long, closing connection")

    async def smtp_DATA(self, arg: str) -> None:
        """DATA by `read_data`: pieces up to each "." CRLF, joined once (aiosmtpd keeps a list with one object
        per line: ~3x the mail in memory, and one await per line), then the handler's DATA hook.

        Same wire rules as aiosmtpd: only CRLF ends a line, only CRLF "." CRLF ends the mail, a leading dot of a
        line is removed. Lines of any length are data (a bare-LF mail is one long line; nothing in it can end
        the mail or become a command); the only limit is the size: over it, the rest is read and dropped and
        the answer is 552."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert envelope is not None
        if not envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            content = await read_data(self._reader, self.data_size_limit)
        except asyncio.CancelledError:
            log.info("%r connection lost during DATA", self.peer)
            self._writer.close()
            raise
        if content is None:
            self.envelope = self._create_envelope()
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        # a bytearray (read_data) passed on as it is: bytes(content) would be a second copy of a large mail
        envelope.content = envelope.original_content = content  # type: ignore[assignment]
        handler: Handler = self.event_handler
        assert self.session is not None  # set by connection_made
        status = await handler.handle_DATA(self, self.session, envelope)
        self.envelope = self._create_envelope()
        await self.push(status)

    def _session_too_long(self) -> None:
        log.info("%r session lasted longer than %ss: closing", self.peer, self.max_seconds)
        self.goodbye("421 4.4.2 Session too long, please try again")

    def idle(self) -> bool:
        """Between mails: no MAIL FROM given (so no DATA running, no store in flight)."""
        return self.transport is not None and (self.envelope is None or self.envelope.mail_from is None)

    def goodbye(self, line: str) -> None:
        t = self.transport
        if isinstance(t, asyncio.WriteTransport) and not t.is_closing():  # plain or TLS: both are
            self.registry.refused(self.protocol_name, line)
            try:
                t.write(line.encode("ascii") + b"\r\n")
            finally:
                t.close()


END_LINE = b".\r\n"


async def read_data(reader: asyncio.StreamReader, limit: int | None) -> bytearray | None:
    """The mail after DATA, dot-unstuffed; None when it was over `limit` bytes (the rest is read and dropped).

    The wire rules of a line reader, applied to pieces as large as the stream gives: a line starts at the
    start of the data or after CRLF (only CRLF ends a line; a bare CR or LF is data); the mail ends at the
    first "." CRLF that starts a line; a "." that starts any other line is removed. A piece ends where "."
    CRLF is (`readuntil`) or where the stream limit is reached: one await per such place, not one per line.
    Bytes after the end line stay in the reader (pipelined commands)."""
    buf = bytearray()  # grown in place (a large mail is one buffer, not its pieces and then their join)
    size = 0
    too_big = False
    tail = b"\r\n"  # the last two bytes read: the data starts at a line start
    while True:
        try:
            piece = await reader.readuntil(END_LINE)
        except asyncio.LimitOverrunError as e:
            piece = await reader.read(e.consumed)  # no end line within the stream limit: what is safe to take
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during DATA") from None
        if not piece:
            raise ConnectionResetError("connection closed during DATA")
        done = piece.endswith(END_LINE) and (tail + piece[-5:-3])[-2:] == b"\r\n"  # (no copy of the piece)
        data = piece[:-3] if done else piece  # the end line itself is not data
        size += len(data)
        if limit and size > limit:
            too_big = True
            buf = bytearray()
        elif not too_big and data:
            if b"\r\n." in data or b"\r\n." in tail + data[:2]:
                # a dot that starts a line (here or right after the previous piece's CRLF) is removed; the
                # two bytes of `tail` are never removed, so they are cut off again
                data = (tail + data).replace(b"\r\n.", b"\r\n")[2:]
            buf += data
        if done:
            break
        tail = (tail + piece[-2:])[-2:]
    if too_big:
        return None
    return buf


class GatewaySMTP(_Sessions):
    pass


class GatewayLMTP(_Sessions, LMTP):
    pass


class Handler:
    """aiosmtpd handler: accept only our addresses, store durably, answer."""

    def __init__(self, config: Config, protocol: str, store: StoreFn, *, disk: DiskGuard | None = None,
                 authenticate: AuthFn | None = None) -> None:
        self.config = config
        self.protocol = protocol
        self.store = store
        self.disk = disk
        self.authenticate = authenticate
        self.max_recipients = config.get("limits", "max_recipients")

    async def handle_MAIL(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope, address: str,
                          mail_options: list[str]) -> str:
        if self.disk is not None and self.disk.low():  # nearly full: the client keeps the mail and tries later
            return INSUFFICIENT
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        if not self.config.is_gateway_address(address):
            return f"550 5.1.1 <{address}>: Recipient address rejected: not served here"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope) -> str:
        raw = envelope.original_content
        assert isinstance(raw, (bytes, bytearray))
        peer = session.peer
        ref = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else (str(peer) if peer else None)
        sender = envelope.mail_from
        if sender is not None and sender.strip() in ("<>", ""):
            sender = ""  # the null sender (bounces, auto-replies)
        helo = session.host_name if isinstance(session.host_name, str) else None
        env = Envelope(mail_from=sender, rcpt_tos=tuple(envelope.rcpt_tos), source=self.protocol, source_ref=ref,
                       client_ip=connlimits.client_key(peer), client_helo=helo[:255] if helo else None)
        # a bytearray from read_data, stored as it is (bytes(raw) would be a second copy of a large mail; only
        # sender authentication, when configured, gets one, for DKIM's parser, freed before the mail is stored)
        try:
            if self.authenticate is not None:
                env = await self.authenticate(bytes(raw), env)
            mail_id = await self.store(raw, env)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 -- whatever it is, the sender must try again, not bounce
            log.warning("%r could not store mail from %r: %s: %s", peer, envelope.mail_from, type(e).__name__, e)
            return self._answer(envelope, TEMPFAIL)
        return self._answer(envelope, f"250 2.0.0 OK stored as mail {mail_id}")

    def _answer(self, envelope: SMTPEnvelope, line: str) -> str:
        if self.protocol != "lmtp":
            return line
        # LMTP (RFC 2033): one reply per accepted recipient, in RCPT order
        code, _, text = line.partition(" ")
        return "\r\n".join(f"{code} {text} <{r}>" if code == "250" else line for r in envelope.rcpt_tos)

    async def handle_exception(self, error: Exception) -> str:
        log.error("session error: %s: %s", type(error).__name__, error, exc_info=error)
        return TEMPFAIL


@dataclass
class Listener:
    spec: dict[str, Any]
    server: asyncio.Server

    @property
    def where(self) -> str:
        s = self.spec
        if s["path"]:
            return f"{s['protocol']} unix:{s['path']}"
        socks = self.server.sockets
        addr = socks[0].getsockname() if socks else (s["host"], s["port"])
        return f"{s['protocol']} {addr[0]}:{addr[1]}"


def tls_context(spec: dict[str, Any]) -> ssl.SSLContext | None:
    if not spec["tls_cert"]:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(spec["tls_cert"], spec["tls_key"])
    return ctx


async def start_listeners(config: Config, store: StoreFn, registry: SessionRegistry, *,
                          disk: DiskGuard | None = None, authenticate: AuthFn | None = None) -> list[Listener]:
    """Bind every configured listener in the running loop; returns them (close with stop_listeners).
    disk: MAIL FROM is answered 452 while it is low; authenticate: the envelope with the sender
    authentication of a mail (gateway.auth), before it is stored."""
    loop = asyncio.get_running_loop()
    hostname = config.get("serve", "hostname") or socket.gethostname()
    limits = config.values["limits"]
    out: list[Listener] = []
    try:
        for spec in listener_specs(config):
            cls = GatewayLMTP if spec["protocol"] == "lmtp" else GatewaySMTP
            handler = Handler(config, spec["protocol"], store, disk=disk, authenticate=authenticate)
            tls = tls_context(spec)

            def factory(cls: type = cls, handler: Handler = handler, tls: ssl.SSLContext | None = tls,
                        spec: dict[str, Any] = spec) -> asyncio.Protocol:
                if registry.closing or registry.full():
                    if not registry.closing:
                        log.warning("session cap (%d) reached: refusing a connection", registry.limit)
                    return _Refuse(registry, spec["protocol"])
                # the greeting names the host only ("220 mx.example.com ESMTP"), not the library and its version
                proto = cls(handler, data_size_limit=limits["max_message_size"], hostname=hostname,
                            ident="LMTP" if spec["protocol"] == "lmtp" else "ESMTP",
                            tls_context=tls, require_starttls=spec["require_starttls"],
                            timeout=limits["session_idle_seconds"], command_call_limit=CALL_LIMITS, loop=loop)
                proto.registry = registry
                proto.max_seconds = limits["session_max_seconds"]
                proto.idle_seconds = limits["session_idle_seconds"]
                return proto

            if spec["path"]:
                path = Path(spec["path"])
                if path.is_socket():
                    path.unlink()  # stale socket of an earlier run
                server = await loop.create_unix_server(factory, str(path))
                os.chmod(path, int(spec["socket_mode"], 8))
            else:
                server = await loop.create_server(factory, spec["host"], spec["port"], reuse_address=True)
            out.append(Listener(spec, server))
    except BaseException:
        await stop_listeners(out)
        raise
    return out


async def stop_listeners(listeners: list[Listener]) -> None:
    for li in listeners:
        li.server.close()
    for li in listeners:
        if li.spec["path"]:
            try:
                if Path(li.spec["path"]).is_socket():
                    os.unlink(li.spec["path"])
            except OSError:
                pass


def quiet_aiosmtpd(verbose: bool) -> None:
    """aiosmtpd logs every command at INFO on 'mail.log'; keep that for -v."""
    logging.getLogger("mail.log").setLevel(logging.DEBUG if verbose else logging.WARNING)


"""A tiny SMTP sink (aiosmtpd) on a loopback port, for tests, the benchmark and local trials:
`python -m gateway.outbound.sink [PORT]` prints what it receives."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP
    from aiosmtpd.smtp import Envelope as SMTPEnvelope
    from aiosmtpd.smtp import Session as SMTPSession


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    at: float = field(default_factory=time.monotonic)
    peer: str = ""  # the client's address and port: one per connection


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sink:
    """Start/stop an aiosmtpd server in a background thread; `received` collects every accepted mail."""

    def __init__(self, port: int | None = None, *, reject: dict[str, int] | None = None,
                 pipelining: bool = False) -> None:
        self.port = port or free_port()
        self.received: list[Received] = []
        self.reject = dict(reject or {})  # recipient -> SMTP code to answer at RCPT
        self.pipelining = pipelining  # announce PIPELINING (RFC 2920), as Postfix does
        self.lock = threading.Lock()
        self.controller: Controller | None = None
        self.arrived = threading.Condition(self.lock)

    # aiosmtpd handler hooks
    async def handle_EHLO(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads commands one line after the other: pipelined ones work
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope, address: str,
                          rcpt_options: list[str]) -> str:
        code = self.reject.get(address.lower())
        if code:
            return f"{code} {'5.1.1 no such user' if code >= 500 else '4.2.0 try later'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: SMTPEnvelope) -> str:
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):  # only with decode_data=True, which start() does not use
            data = data.encode("utf-8", "surrogateescape")
        with self.arrived:
            self.received.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), bytes(data),
                                          peer=str(session.peer)))
            self.arrived.notify_all()
        return "250 Message accepted"

    def start(self) -> Sink:
        from aiosmtpd.controller import Controller

        controller = Controller(self, hostname="127.0.0.1", port=self.port, decode_data=False,
                                data_size_limit=0, ready_timeout=10)
        controller.start()
        self.controller = controller
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        with self.arrived:
            while len(self.received) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.wait(left)
            return list(self.received)

    def __enter__(self) -> Sink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover
    import sys

    sink = Sink(int(sys.argv[1]) if len(sys.argv) > 1 else 2526).start()
    print(f"SMTP sink on 127.0.0.1:{sink.port}; Ctrl-C to stop", flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.5)
            for r in sink.received[seen:]:
                print(f"--- from {r.mail_from} to {', '.join(r.rcpt_tos)} ({len(r.data)} bytes)\n"
                      + r.data.decode("utf-8", "replace"), flush=True)
            seen = len(sink.received)
    except KeyboardInterrupt:
        sink.stop()

"""A small authoritative DNS server on loopback for the sender-authentication tests (dnslib, in-process):
UDP and TCP on one free port, answering from a dict of records that a test may change while it runs.

    zone = DnsServer().start()
    zone.txt("corp.example", "v=spf1 ip4:127.0.0.2 -all")
    zone.txt("_dmarc.corp.example", "v=DMARC1; p=reject")
    config: [authentication] dns_servers = [zone.address]     # "127.0.0.1:PORT"
"""

from __future__ import annotations

import socket
import threading
from collections import defaultdict
from typing import Any

from dnslib import AAAA, MX, QTYPE, RCODE, RR, TXT, A, DNSRecord
from dnslib.server import BaseResolver, DNSServer


def _chunks(text: str) -> list[bytes]:
    b = text.encode()
    return [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]


class _Resolver(BaseResolver):
    def __init__(self, zone: DnsServer) -> None:
        self.zone = zone

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        reply = request.reply()
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE[q.qtype]
        with self.zone.lock:
            self.zone.queries.append((name, qtype))
            records = list(self.zone.records.get((name, qtype), []))
            known = any(n == name for n, _ in self.zone.records)
        for rdata in records:
            reply.add_answer(RR(q.qname, q.qtype, rdata=rdata, ttl=1))
        if not records and not known:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class DnsServer:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list[Any]] = defaultdict(list)
        self.queries: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.port = 0
        self._servers: list[DNSServer] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def txt(self, name: str, text: str) -> DnsServer:
        with self.lock:
            self.records[(name.lower(), "TXT")].append(TXT(_chunks(text)))
        return self

    def a(self, name: str, ip: str) -> DnsServer:
        with self.lock:
            self.records[(name.lower(), "A" if ":" not in ip else "AAAA")].append(A(ip) if ":" not in ip else AAAA(ip))
        return self

    def mx(self, name: str, host: str, preference: int = 10) -> DnsServer:
        with self.lock:
            self.records[(name.lower(), "MX")].append(MX(host, preference))
        return self

    def clear(self, name: str) -> None:
        with self.lock:
            for key in [k for k in self.records if k[0] == name.lower()]:
                del self.records[key]

    def start(self) -> DnsServer:
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            try:
                udp = DNSServer(_Resolver(self), port=port, address="127.0.0.1")
                tcp = DNSServer(_Resolver(self), port=port, address="127.0.0.1", tcp=True)
            except OSError:
                continue
            self.port = port
            self._servers = [udp, tcp]
            for srv in self._servers:
                srv.start_thread()
            return self
        raise RuntimeError("no free port for the DNS server")

    def stop(self) -> None:
        for srv in self._servers:
            srv.stop()
            srv.server.server_close()

"""SMTP/LMTP connection policy, after Postfix: a per-client limit on concurrent sessions
(smtpd_client_connection_count_limit) and stress-dependent idle timeouts (when the sessions near the overall
limit, an idle session is cut after a short timeout, as Postfix does with 10 s under stress).

Pure: the counts are arguments. gateway.smtp.SessionRegistry keeps the counts and asks.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

TOO_MANY_FROM_YOU = "421 4.7.0 Too many connections from your address, please try again later"


@dataclass(frozen=True)
class ConnLimits:
    max_sessions: int
    per_client: int
    stress_threshold: float      # share of max_sessions at which the service is under stress
    idle_seconds: float
    stress_idle_seconds: float
    exceptions: tuple[Any, ...] = ()  # ipaddress networks the per-client limit does not apply to

    @classmethod
    def of(cls, limits: dict[str, Any]) -> ConnLimits:
        return cls(int(limits["max_sessions"]), int(limits["max_sessions_per_client"]),
                   float(limits["stress_threshold"]), float(limits["session_idle_seconds"]),
                   float(limits["stress_idle_seconds"]),
                   tuple(ipaddress.ip_network(n, strict=False) for n in limits["client_limit_exceptions"]))


def client_key(peer: Any) -> str | None:
    """The client address a limit counts by (None: a Unix-socket client, never limited)."""
    if isinstance(peer, (tuple, list)) and peer and isinstance(peer[0], str) and peer[0]:
        return peer[0].split("%", 1)[0]
    return None


def exempt(limits: ConnLimits, client: str | None, exceptions: Iterable[Any] | None = None) -> bool:
    if client is None:
        return True
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(ip in net for net in (limits.exceptions if exceptions is None else exceptions))


def refuse(limits: ConnLimits, client: str | None, sessions_of_client: int) -> str | None:
    """The reply for a new session from `client` that already has `sessions_of_client` open, or None (admit)."""
    if exempt(limits, client):
        return None
    if sessions_of_client >= limits.per_client:
        return TOO_MANY_FROM_YOU
    return None


def stressed(limits: ConnLimits, live: int) -> bool:
    return live >= max(1, int(limits.max_sessions * limits.stress_threshold + 0.999999))


def idle_timeout(limits: ConnLimits, live: int) -> float:
    """How long a session may stay silent with `live` sessions open."""
    if stressed(limits, live):
        return min(limits.idle_seconds, limits.stress_idle_seconds)
    return limits.idle_seconds

"""Routing: defaults for new tickets (group, priority, type) chosen by the recipient address."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.config import Config


def route_for(config: Config, recipients: Iterable[str]) -> dict[str, Any]:
    """Routing defaults (group, priority, type) of the first [[routes]] entry matching a recipient.

    Used by the pipeline's `route` handler.
    """
    recipients = list(recipients)
    for route in config.values.get("routes") or []:
        want = route["address"].lower()
        for rcpt in recipients:
            addr = (rcpt or "").lower()
            local, _, domain = addr.rpartition("@")
            if addr == want or f"{local.split('+', 1)[0]}@{domain}" == want:
                out = {"priority": route["priority"], "type": route["type"]}
                if route["group"]:
                    out["group"] = route["group"]
                return out
    return {}

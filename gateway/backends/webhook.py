"""Webhooks from the desk: a doorbell, never a source of data.

`handle_webhook(app, name, headers, body)` is a plain function for the HTTP listener to mount at
POST /api/v1/backends/{name}/webhook. It checks the desk's HMAC signature (X-Hub-Signature: `sha256=<hex>` from
Jira and SMAX, `sha1=<hex>` from Zammad) over the raw body against backend.webhook_secret_file -- no secret
configured, no webhooks -- and then only marks the requests the payload names for a re-read (or asks for a
poll when it names none the gateway knows). What the desk really says is read back from the desk by the broker.
A bad or missing signature changes nothing and is answered 401; it costs one HMAC over at most MAX_BODY bytes.
It makes one short database write: call it off the event loop (a thread)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

log = logging.getLogger("gateway.backends.webhook")
MAX_BODY = 1024 * 1024


@dataclass
class WebhookResult:
    status: int
    body: dict[str, Any] = field(default_factory=dict)


def signature_ok(secret: bytes, body: bytes, header: str | None, algorithm: str) -> bool:
    if not header or "=" not in header:
        return False
    scheme, _, given = header.strip().partition("=")
    if scheme.lower() != algorithm:
        return False
    expected = hmac.new(secret, body, getattr(hashlib, algorithm)).hexdigest()
    return hmac.compare_digest(expected, given.strip().lower())


def handle_webhook(app: Any, name: str, headers: Mapping[str, str], body: bytes,
                   now: datetime | None = None) -> WebhookResult:
    from gateway.backends.lookup import broker_settings, desk_class
    from gateway.backends.sync import ring

    settings = broker_settings(app)
    if settings is None or name != settings.name:
        return WebhookResult(404, {"error": "no such backend"})
    if len(body) > MAX_BODY:
        return WebhookResult(413, {"error": "payload too large"})
    secret = settings.webhook_secret()
    if secret is None:
        return WebhookResult(403, {"error": "webhooks are off (backend.webhook_secret_file)"})
    cls = desk_class(settings.kind)
    header = next((v for k, v in headers.items() if k.lower() == "x-hub-signature"), None)
    if not signature_ok(secret, body, header, cls.signature_algorithm):
        log.warning("backend %s: webhook with a bad or missing signature ignored", name)
        return WebhookResult(401, {"error": "bad signature"})
    try:
        payload = json.loads(body)
    except ValueError:
        payload = None
    keys = cls.webhook_keys(payload)
    n = ring(app, settings.name, keys, now or app.clock())
    return WebhookResult(202, {"accepted": True, "refresh": n, "poll": n == 0})

"""The handlers' unit tests (tests/unit/handlers): each handler alone, on the in-memory store
(gateway.store.memory) and a fixed clock (gateway.clock), the way GNU Mailman 3's handlers/tests run one handler
over one message: no database, no other handler. The fixtures `store` and `make_ctx` (tests/conftest.py) are
`new_store()` and `context_maker(store, tmp_path)`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mails import make_mail

from gateway.clock import fixed_clock
from gateway.config import validate
from gateway.mime import parse_mail
from gateway.models import InboundMail
from gateway.pipeline import MailContext
from gateway.store.ahead import Ahead
from gateway.store.memory import InMemoryStore

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
SECRET = "unit-test-reply-secret-0123456789"  # outbound.reply_secret: no secret file is written


def new_store() -> InMemoryStore:
    return InMemoryStore(fixed_clock(NOW))


MakeCtx = Callable[..., MailContext]


def context_maker(store: InMemoryStore, tmp_path: Any) -> MakeCtx:
    """make_ctx(raw=None, *, parsed=True, envelope_from=None, envelope_to=("support@example.com",),
    prepared=None, dry_run=False, config={...} merged into the defaults, **make_mail arguments)."""

    def make(raw: bytes | None = None, *, parsed: bool = True, envelope_from: str | None = None,
             envelope_to: tuple[str, ...] = ("support@example.com",), prepared: Any = None, dry_run: bool = False,
             config: dict[str, Any] | None = None, **mail: Any) -> MailContext:
        raw = raw if raw is not None else make_mail(**mail)
        values: dict[str, Any] = {"gateway": {"addresses": ["support@example.com"], "data_dir": str(tmp_path)},
                                  "outbound": {"reply_secret": SECRET}}
        for section, settings in (config or {}).items():
            values[section] = {**values.get(section, {}), **settings} if isinstance(settings, dict) else settings
        m = InboundMail(received_at=NOW, source="smtp", envelope_from=envelope_from,
                        envelope_to=list(envelope_to), sha256=hashlib.sha256(raw).hexdigest(), size=len(raw),
                        outcome="received", trace=[], attempts=1)
        ctx = MailContext(store=store, config=validate(values), clock=store.clock, mail=m, raw=raw,
                          ahead=Ahead(prepared), dry_run=dry_run)
        if parsed:
            ctx.parsed = parse_mail(raw)
        return ctx

    return make

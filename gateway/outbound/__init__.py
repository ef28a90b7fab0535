"""Outbound mail: templated notifications written to a durable outbox in the transaction that caused them,
signed reply addresses, loop guards, and delivery with retries (`deliver_due`).

`install(app)` is listed in gateway.app's features: it checks the templates (a missing variable stops the
start), resolves the reply secret (gateway.ourmail) and registers the listener in `app.listeners`. The hooks
live in gateway.outbound.feature, the template check in gateway.outbound.check; this package only names
them (its modules never import it back).

The template check renders every template (notifications and SLA mails) with sample data under
StrictUndefined. That costs ~150 ms of jinja2 compilation, too much for every MTA-pipe `ingest` process,
which only queues rows and never renders. So:
* `serve` (install_service), `outbox flush` (sender.flush) and `check_templates(config, force=True)` (for
  `check-config`) always run the full check;
* the templates of other features that send through the outbox (the SLA mails) are checked with ours: their
  listener, registered before ours, declares sample values (`check.TemplateUser`);
* every other start (`ingest`, the CLI) runs it only when the template sources or the code that feeds them
  changed since the last successful check: the key (sha256 over every template file the loader can see,
  override directory first, over the modules that build the template variables and over the other features'
  samples) is kept in <data_dir>/templates-checked, written only after a successful check.
Rendering at delivery is StrictUndefined too: a template broken behind the check's back fails its row
(visible in `outbox list`), it never sends a blank.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from gateway.ourmail import reply_secret
from gateway.outbound.check import STAMP_FILE, check_app_templates, check_templates
from gateway.outbound.feature import install, install_service
from gateway.outbound.notify import notifier_of

if TYPE_CHECKING:
    from gateway.host import AppHost
    from gateway.outbound.sender import Counts, Transport

__all__ = ["install", "install_service", "notifier_of", "deliver_due", "flush", "reply_secret", "check_templates",
           "check_app_templates", "STAMP_FILE"]


def deliver_due(app: AppHost, now: datetime | None = None, *, limit: int | None = None,
                transport: Transport | None = None) -> Counts:
    """One delivery round (gateway.outbound.sender.deliver_due; imported when called: smtplib and ssl stay
    out of the processes that only queue mail)."""
    from gateway.outbound.sender import deliver_due as _deliver

    return _deliver(app, now, limit=limit, transport=transport)


def flush(app: AppHost, now: Callable[[], datetime] | None = None, *, max_rounds: int = 10_000) -> Counts:
    """Deliver until nothing is due (gateway.outbound.sender.flush)."""
    from gateway.outbound.sender import flush as _flush

    return _flush(app, now, max_rounds=max_rounds)

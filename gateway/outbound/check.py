"""The start-up template check: every template rendered once with sample data under StrictUndefined (see
gateway.outbound for when it runs), the notifications' own and those of other features that send through
the outbox (`TemplateUser`)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gateway.config import Config, ConfigError
from gateway.outbound.notify import notifier_of

if TYPE_CHECKING:
    from gateway.host import AppHost
    from gateway.outbound.render import Templates

STAMP_FILE = "templates-checked"

Samples = list[tuple[str, dict[str, Any]]]  # (event, sample template context)


@runtime_checkable
class TemplateUser(Protocol):
    """A listener of another feature that sends mail through the outbox with templates of its own (the SLA
    mails): the start-up check renders those too, with the samples it gives."""

    def template_samples(self) -> Samples: ...


def template_samples(app: AppHost) -> Samples:
    """The samples of every other feature's templates, from the listeners registered before ours."""
    out: Samples = []
    for listener in app.listeners:
        if isinstance(listener, TemplateUser):
            out += listener.template_samples()
    return out


def _code_key(extra: Samples) -> bytes:
    """The sources of the modules that build the template variables, and the other features' samples: a new
    version re-checks."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for p in (here / "render.py", here / "notify.py", here / "build.py"):
        try:
            h.update(p.read_bytes())
        except OSError:
            h.update(b"-")
    h.update(repr(extra).encode("utf-8", "surrogateescape"))
    return h.digest()


def run_check(config: Config, templates: Templates, *, force: bool, extra: Samples, record: bool = True) -> None:
    """Run the full sample render unless already done in this process, or (not forced) the stamp file says
    these exact sources passed before. Raises ConfigError naming the template. record=False: write nothing
    (check-config, often run as root before the service ever started, must not create the data directory)."""
    from gateway.outbound.render import TemplateError

    if templates.checked:
        return
    try:
        key = hashlib.sha256(_code_key(extra) + templates.fingerprint().encode()).hexdigest()
        stamp = config.data_dir / STAMP_FILE
        if not force:
            try:
                if stamp.read_text("ascii").strip() == key:
                    return
            except (OSError, UnicodeDecodeError):
                pass
        templates.check(extra)
    except TemplateError as e:
        raise ConfigError(f"notifications.template_dir: {e}") from e
    if not record:
        return
    try:  # best effort: a read-only data directory only means checking again next time
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f".{STAMP_FILE}.{os.getpid()}")
        tmp.write_text(key + "\n", "ascii")
        os.replace(tmp, stamp)
    except OSError:
        pass


def load_templates(config: Config) -> Templates:
    """The built-in templates with the operator's directory over them; a broken directory names its key."""
    from gateway.outbound.render import TemplateError, Templates

    try:
        return Templates(config.notifications["template_dir"] or None)
    except TemplateError as e:
        raise ConfigError(f"notifications.template_dir: {e}") from e


def check_templates(config: Config, *, force: bool = True, extra: Samples | None = None) -> None:
    """The start-up template check for a command that does not build an App (`check-config`); `extra`: the
    samples of other features' templates."""
    if not config.outbound["enabled"]:
        return
    run_check(config, load_templates(config), force=force, extra=list(extra or []), record=False)


def check_app_templates(app: AppHost, *, force: bool = True) -> None:
    """The full template check on the App's own Templates (compiled once; delivery reuses them)."""
    ob = notifier_of(app)
    if ob is not None:
        run_check(app.config, ob.templates, force=force, extra=template_samples(app))

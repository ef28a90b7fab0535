"""What the broker's parts look up: the App's broker settings (from its push-queue listener) and the desk
adapter class of a kind. Its own module: the webhook and the CLI use it, and the package imports the webhook."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.backends.desk import Desk
    from gateway.backends.settings import Settings
    from gateway.host import AppHost


def broker_settings(app: AppHost) -> Settings | None:
    """The [backend] settings when the broker is on (its listener is registered on the App), else None."""
    from gateway.backends.queue import Enqueue

    for listener in app.listeners:
        if isinstance(listener, Enqueue):
            return listener.settings
    return None


def desk_class(kind: str) -> type[Desk]:
    if kind == "jira":
        from gateway.backends.jira import Jira

        return Jira
    if kind == "zammad":
        from gateway.backends.zammad import Zammad

        return Zammad
    from gateway.backends.smax import Smax

    return Smax

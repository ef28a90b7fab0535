"""A watcher leaves a ticket by the signed token of its notifications' List-Unsubscribe (gateway.ourmail): the
RFC 8058 one-click URL of the HTTP API (gateway.api.unsubscribe). The mailto address of the same header is
handled by the inbound pipeline (handlers/unsubscribe.py), with the same Tickets.unsubscribe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.db import transaction
from gateway.ourmail import parse_unsubscribe_token, reply_secret
from gateway.tickets import Tickets

if TYPE_CHECKING:
    from gateway.app import App


@dataclass(frozen=True)
class Unsubscribed:
    ticket: int
    email: str


def unsubscribe(app: App, token: str) -> Unsubscribed | None:
    """Remove the watcher the token names; None when it names no current watcher (nothing changes)."""
    if parse_unsubscribe_token(token) is None:
        return None
    with transaction(app.sessions) as s:
        done = Tickets(s, clock=app.clock, listeners=app.listeners).unsubscribe(reply_secret(app.config), token)
        return Unsubscribed(done[0].number, done[1]) if done is not None else None


def valid_token(token: str) -> bool:
    """The token's shape (not its signature): what the page for a GET may show a form for."""
    return parse_unsubscribe_token(token) is not None

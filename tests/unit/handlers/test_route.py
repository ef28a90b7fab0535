"""`route` alone: a new ticket's defaults from the address the mail was sent to ([[routes]])."""

from __future__ import annotations

from handlerkit import MakeCtx

from gateway.handlers import route

ROUTES = {"gateway": {"addresses": ["support@example.com", "billing@example.com"]},
          "routes": [{"address": "billing@example.com", "group": "billing", "priority": "high",
                      "type": "service_request"}]}


def test_the_envelope_recipient_picks_the_route(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(envelope_to=("billing@example.com",), config=ROUTES)
    route.handle(ctx)
    assert ctx.routing == {"group": "billing", "priority": "high", "type": "service_request"}
    assert ctx.trace == ["route: group billing, priority high, type service_request"]


def test_without_an_envelope_the_headers_do(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(envelope_to=(), to="Billing <billing@example.com>", config=ROUTES)
    route.handle(ctx)
    assert ctx.routing["group"] == "billing"


def test_no_route_matches_or_none_configured(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(config=ROUTES)
    route.handle(ctx)
    plain = make_ctx()
    route.handle(plain)
    assert ctx.routing == {} and plain.routing == {} and ctx.trace == plain.trace == []

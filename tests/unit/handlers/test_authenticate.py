"""`authenticate` alone: the result found on arrival (stored with the mail), or the trusted
Authentication-Results; a failure quarantines the mail unless an admin released it."""

from __future__ import annotations

import pytest
from handlerkit import MakeCtx
from mails import AUTHSERV, TRUST_MX, authenticated

from gateway import auth
from gateway.handlers import authenticate
from gateway.outcomes import Quarantine


def test_nothing_checked_and_nothing_trusted_is_unverified(make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    authenticate.handle(ctx)
    assert ctx.auth is not None and ctx.auth.verdict == auth.NONE
    assert ctx.trace[-1].startswith("authenticate: unverified sender")


def test_the_result_stored_on_arrival_decides(make_ctx: MakeCtx) -> None:
    ctx = make_ctx()
    ctx.mail.auth = auth.AuthResult(verdict=auth.PASS, by="gateway", dmarc=auth.PASS,
                                    from_domain="customer.example").as_dict()
    authenticate.handle(ctx)
    assert ctx.auth is not None and ctx.auth.verdict == auth.PASS
    assert ctx.trace == [f"authenticate: {ctx.auth.summary()}"]


def test_trusted_results_are_read_and_stored(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(headers=authenticated(), config={"authentication": TRUST_MX})
    authenticate.handle(ctx)
    assert ctx.auth is not None and ctx.auth.verdict == auth.PASS and AUTHSERV in ctx.auth.by
    assert ctx.mail.auth == ctx.auth.as_dict()  # kept with the mail: a replay decides the same way


def test_a_failure_is_quarantined_unless_released(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(headers=authenticated(result="fail"), config={"authentication": TRUST_MX})
    with pytest.raises(Quarantine) as e:
        authenticate.handle(ctx)
    assert e.value.reason.startswith(f"{auth.REASON}: ") and "dmarc=fail" in e.value.reason
    released = make_ctx(headers=authenticated(result="fail"), config={"authentication": TRUST_MX})
    released.mail.released = [auth.REASON]
    authenticate.handle(released)
    assert released.trace[-1] == "authenticate: accepted by an admin (replay): the mail acts as its sender"


def test_a_dry_run_stores_nothing(make_ctx: MakeCtx) -> None:
    ctx = make_ctx(headers=authenticated(), config={"authentication": TRUST_MX}, dry_run=True)
    authenticate.handle(ctx)
    assert ctx.auth is not None and ctx.auth.verdict == auth.PASS and ctx.mail.auth is None

"""`attachments` alone: every attachment stored content-addressed (its sha256, never its name) and recorded
against the ticket and comment; what the preparation worker stored already is not stored again."""

from __future__ import annotations

import hashlib

from handlerkit import MakeCtx

from gateway.handlers import attachments
from gateway.prepare import prepare_one
from gateway.store.memory import InMemoryStore

FILES = [("../../etc/passwd", "text/plain", b"not a path"), ("report.pdf", "application/pdf", b"%PDF-1.4 x")]


def test_attachments_are_stored_and_recorded(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx(attachments=FILES)
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"))
    attachments.handle(ctx)
    shas = [hashlib.sha256(data).hexdigest() for _, _, data in FILES]
    assert sorted(store.blobs) == sorted(shas)
    assert [(a["sha256"], a["size"], a["ticket_id"], a["comment_id"]) for a in store.attachments] == [
        (shas[0], 10, ctx.ticket.id, None), (shas[1], 10, ctx.ticket.id, None)]
    assert store.attachments[1]["filename"] == "report.pdf" and store.attachments[1]["content_type"] == \
        "application/pdf"
    assert ctx.trace == [f"attachments: 2 stored ({store.attachments[0]['filename']}, report.pdf)"]


def test_what_the_worker_stored_is_recorded_not_stored_again(make_ctx: MakeCtx, store: InMemoryStore,
                                                             tmp_path: object) -> None:
    from mails import make_mail

    raw = make_mail(attachments=FILES)
    ctx = make_ctx(raw, prepared=prepare_one(raw, 20, 500, str(tmp_path)))
    ctx.parsed = ctx.ahead.parse(raw, max_depth=20, max_parts=500)
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"))
    attachments.handle(ctx)
    assert store.blobs == {}  # the worker's blob store has them
    assert [a["sha256"] for a in store.attachments] == [hashlib.sha256(d).hexdigest() for _, _, d in FILES]
    assert [a["size"] for a in store.attachments] == [10, 10]


def test_no_attachments_nothing_recorded(make_ctx: MakeCtx, store: InMemoryStore) -> None:
    ctx = make_ctx()
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"))
    attachments.handle(ctx)
    assert store.attachments == [] and ctx.trace == []

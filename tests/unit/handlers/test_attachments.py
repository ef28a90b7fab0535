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


def test_the_worker_decodes_a_large_attachment_into_its_blob(make_ctx: MakeCtx, store: InMemoryStore,
                                                              tmp_path: object) -> None:
    """A large mail's attachments (kept out of the parsed tree) are decoded into the worker's blob store a piece
    at a time: the blobs hold exactly the attached bytes, and nothing of them is sent back."""
    import os
    from pathlib import Path

    from mails import make_mail

    files = [("disk.img", "application/octet-stream", os.urandom(5 * 2**20 + 1)),
             ("scan.png", "image/png", os.urandom(300_001)), *FILES]
    raw = make_mail(attachments=files)
    prep = prepare_one(raw, 20, 500, str(tmp_path))
    assert [(a.data, a.source) for a in prep.parsed.attachments] == [(b"", None)] * 4
    assert prep.sizes == [len(d) for _, _, d in files]
    assert [(Path(str(tmp_path)) / s[:2] / s[2:4] / s).read_bytes() for s in prep.shas] == [d for _, _, d in files]
    ctx = make_ctx(raw, prepared=prep)
    ctx.parsed = ctx.ahead.parse(raw, max_depth=20, max_parts=500)
    ctx.ticket = store.open_ticket(store.add_contact("alice@customer.example"))
    attachments.handle(ctx)
    assert [(a["sha256"], a["size"]) for a in store.attachments] == [
        (hashlib.sha256(d).hexdigest(), len(d)) for _, _, d in files]


def test_blobs_the_worker_cannot_write_are_sent_back_whole(tmp_path: object) -> None:
    """The worker's blob store fails (here: its root is a file): every attachment goes back with its bytes, a
    large one decoded whole, for the main process to store (and meet the same failure)."""
    import os
    from pathlib import Path

    from mails import make_mail

    files = [("disk.img", "application/octet-stream", os.urandom(300_001)), *FILES]
    raw = make_mail(attachments=files)
    root = Path(str(tmp_path)) / "not-a-directory"
    root.write_bytes(b"")
    prep = prepare_one(raw, 20, 500, str(root))
    assert prep.shas is None and prep.sizes is None
    assert [(a.data, a.source) for a in prep.parsed.attachments] == [(d, None) for _, _, d in files]

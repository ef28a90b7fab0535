"""Store attachments content-addressed (sha256 path, never a sender's file name) and record them."""

from __future__ import annotations

from gateway.pipeline import MailContext


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None and ctx.ticket is not None
    if not p.attachments:
        return
    now = ctx.clock()
    rows = []
    for i, part in enumerate(p.attachments):
        sha, size = ctx.ahead.attachment(i, part.data, ctx.store.put_blob)
        rows.append({"ticket_id": ctx.ticket.id, "comment_id": ctx.comment.id if ctx.comment else None,
                     "filename": part.filename, "content_type": part.content_type, "size": size,
                     "sha256": sha, "content_id": part.content_id, "inline": part.inline, "created_at": now})
    ctx.store.add_attachments(rows)
    ctx.note(f"attachments: {len(p.attachments)} stored ({', '.join(a.filename for a in p.attachments[:5])}"
             + (", ..." if len(p.attachments) > 5 else "") + ")")

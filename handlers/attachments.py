"""Store attachments content-addressed (sha256 path, never a sender's file name) and record them."""

from __future__ import annotations

from sqlalchemy import insert

from gateway.models import Attachment, table_of
from gateway.pipeline import MailContext


def handle(ctx: MailContext) -> None:
    p = ctx.parsed
    assert p is not None and ctx.ticket is not None
    if not p.attachments:
        return
    now = ctx.clock()
    rows = []
    # written ahead by the import's worker process (gateway.prepare): the shas and sizes, the data left out
    prep = ctx.prepared if ctx.prepared is not None and ctx.prepared.shas is not None else None
    for i, part in enumerate(p.attachments):
        if prep is not None:
            sha, size = prep.shas[i], prep.sizes[i]
        elif ctx.dry_run:
            import hashlib

            sha, size = hashlib.sha256(part.data).hexdigest(), len(part.data)
        else:
            sha, size = ctx.blobs.put(part.data), len(part.data)
        rows.append({"ticket_id": ctx.ticket.id, "comment_id": ctx.comment.id if ctx.comment else None,
                     "filename": part.filename, "content_type": part.content_type, "size": size,
                     "sha256": sha, "content_id": part.content_id, "inline": part.inline, "created_at": now})
    # one statement for all of them, on the session's connection (its transaction and savepoint)
    ctx.session.connection().execute(insert(table_of(Attachment)), rows)
    ctx.note(f"attachments: {len(p.attachments)} stored ({', '.join(a.filename for a in p.attachments[:5])}"
             + (", ..." if len(p.attachments) > 5 else "") + ")")

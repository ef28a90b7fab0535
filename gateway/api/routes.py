"""Every operation of /api/v1, declared once: path, scope, parameters, body and response schemas, handler. The
OpenAPI document, the routing and the request validation all come from these declarations. Handlers only
translate HTTP to the shared operations (gateway.ops) and back.

Scopes: read (every GET), write (tickets, comments, attachments), admin (SLA policies, users, organisations,
mail replay, outbox retry, tokens).

Extension point: modules listed in EXTENSIONS ("module:function", the function returning a list of `Op`)
add operations, e.g. ticket links, time entries, watchers and merge once the ticket model has them; their
paths and schemas join the OpenAPI document like the built-in ones.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from gateway.api import spec
from gateway.api.spec import Op, Param, array, boolean, email, integer, loose, obj, page_of, ref, string
from gateway.models import MAIL_OUTCOMES, OUTBOX_STATUSES, PRIORITIES, STATUSES, TOKEN_SCOPES, TYPES, VISIBILITIES
from gateway.ops import directory, mail, outbox, pages, sla, tickets, tokens

if TYPE_CHECKING:
    from gateway.api.app import Call

EXTENSIONS: tuple[str, ...] = (  # "module:function" -> list[Op] (links, time entries, watchers, merge, ...)
    "gateway.api.backends:operations",  # POST /backends/{name}/webhook (signed by the desk, no token)
    "gateway.api.unsubscribe:operations",  # RFC 8058 one-click unsubscribe (a signed token in the path)
    "gateway.api.work:operations",  # ticket links, time entries, watchers, merge
)

JSON = "application/json"
STATUS_E, PRIORITY_E, TYPE_E = tuple(STATUSES), tuple(PRIORITIES), tuple(TYPES)
VISIBILITY_DOC = ("reporter-only (the default): a ticket's participants are its reporter and watchers; organisation: "
                  "every member of the organisation too")

SCHEMAS: dict[str, spec.Schema] = {
    "Ticket": obj({
        "number": integer(), "subject": string(max_length=998), "status": string(enum=STATUS_E),
        "priority": string(enum=PRIORITY_E), "type": string(enum=TYPE_E),
        "reporter": obj({"email": email(), "name": string(max_length=200)}, additional=True),
        "sender": string(max_length=320, nullable=True), "organisation": string(max_length=200, nullable=True),
        "assignee": string(max_length=320, nullable=True), "group": string(max_length=100, nullable=True),
        "watchers": array(string(max_length=320), max_items=10_000), "tags": array(string(max_length=100)),
        "description": string(max_length=1 << 24), "external_id": string(max_length=200, nullable=True),
        "created_at": string(fmt="date-time"), "updated_at": string(fmt="date-time"),
        "closed_at": string(fmt="date-time", nullable=True), "comment_count": integer(minimum=0),
        "sla": loose("policy, response_due_at, resolution_due_at, first_response_at, paused_at, remind_at, state "
                     "(breached | paused | at_risk | on_track | met | none)"),
        "links": array(ref("Link"), max_items=400),
        "time_minutes": integer(minimum=0, description="the total of the ticket's time entries"),
        "merged_into": integer(nullable=True, description="merged into this ticket (closed; mail lands there)"),
        "customer_spoke_last": boolean("the customer wrote the last public comment (waits for an answer)"),
    }, required=("number", "subject", "status"), additional=True),
    "Link": obj({"kind": string(max_length=64, description="as read from this ticket: relates, duplicates, "
                                "duplicated-by, caused-by, causes, blocks, blocked-by (automatic: related, "
                                "follow_up_of)"),
                 "number": integer(), "subject": string(max_length=998, nullable=True),
                 "status": string(enum=STATUS_E, nullable=True)}, required=("kind", "number"), additional=True),
    "TicketCreate": obj({
        "subject": string(max_length=998, min_length=1), "reporter": email(),
        "description": string(max_length=1 << 20), "priority": string(enum=PRIORITY_E),
        "type": string(enum=TYPE_E), "group": string(max_length=100, nullable=True),
        "organisation": string(max_length=200, nullable=True, description="an existing organisation's name"),
        "tags": array(string(max_length=100, min_length=1), max_items=tickets.MAX_TAGS),
        "watchers": array(email(), max_items=tickets.MAX_WATCHERS),
        "external_id": string(max_length=200, min_length=1, nullable=True,
                              description="the caller's id for this ticket: a create with an external_id seen "
                                          "before returns that ticket (200) instead of a new one"),
    }, required=("subject", "reporter")),
    "TicketPatch": obj({
        "status": string(enum=STATUS_E), "priority": string(enum=PRIORITY_E), "type": string(enum=TYPE_E),
        "assignee": email(nullable=True, description="a staff contact; null unassigns"),
        "group": string(max_length=100, min_length=1, nullable=True, description="null clears it"),
        "organisation": string(max_length=200, min_length=1, nullable=True,
                               description="an existing organisation's name; null clears it"),
        "tags": array(string(max_length=100, min_length=1), max_items=tickets.MAX_TAGS,
                      description="the ticket's tags (replaces them)"),
        "add_tags": array(string(max_length=100, min_length=1), max_items=tickets.MAX_TAGS),
        "remove_tags": array(string(max_length=100, min_length=1), max_items=tickets.MAX_TAGS),
        "remind_at": string(fmt="date-time", nullable=True,
                            description="pending with a reminder on this date (implies status pending); null "
                                        "clears it"),
        "by": email(description="the contact making the change (shown in notifications)"),
    }),
    "TicketChange": obj({"number": integer(), "changes": loose("field -> [old, new]"), "sla": loose(),
                         "ticket": ref("Ticket")}, required=("number", "changes", "ticket")),
    "Attachment": obj({"id": integer(), "filename": string(max_length=255), "content_type": string(max_length=255),
                       "size": integer(minimum=0), "sha256": string(max_length=64),
                       "content_id": string(max_length=998, nullable=True), "inline": boolean(),
                       "comment_id": integer(nullable=True)}, required=("id", "filename", "size"), additional=True),
    "Comment": obj({"id": integer(), "author": string(max_length=320, nullable=True),
                    "body": string(max_length=1 << 24), "html": string(max_length=1 << 24, nullable=True),
                    "internal": boolean(), "by_staff": boolean(), "source": string(max_length=16),
                    "created_at": string(fmt="date-time"),
                    "attachments": array(ref("Attachment"), max_items=1000)},
                   required=("id", "body", "internal"), additional=True),
    "CommentCreate": obj({
        "body": string(max_length=1 << 20, description="the text; public comments are mailed to the reporter "
                                                         "and watchers like a staff reply"),
        "internal": boolean("an internal note: only staff see it and get it"),
        "author": email(description="the contact who writes (default: the help desk)"),
    }, required=("body",)),
    "CommentUpload": obj({
        "body": string(max_length=1 << 20), "internal": boolean(), "author": email(),
        "files": array({"type": "string", "contentMediaType": "application/octet-stream"},
                       max_items=tickets.MAX_ATTACHMENTS, description="the attachments (any part with a file name)"),
    }),
    "LinkCreate": obj({"number": integer(minimum=1, description="the other ticket"),
                       "kind": string(max_length=32, description="relates, duplicates, duplicated-by, caused-by "
                                      "(the other one is the root cause), causes, blocks, blocked-by")},
                      required=("number", "kind")),
    "LinkResult": obj({"number": integer(), "other": integer(), "kind": string(max_length=64),
                       "created": boolean(), "removed": integer(minimum=0),
                       "links": array(ref("Link"), max_items=400)}, required=("number", "other", "links")),
    "TimeEntry": obj({"id": integer(), "minutes": integer(minimum=1), "duration": string(max_length=20),
                      "author": string(max_length=320, nullable=True), "note": string(max_length=2000),
                      "spent_at": string(fmt="date-time"), "created_at": string(fmt="date-time"),
                      "number": integer(), "total_minutes": integer(minimum=0), "total": string(max_length=20)},
                     required=("id", "minutes"), additional=True),
    "TimeEntryCreate": obj({
        "duration": string(max_length=20, min_length=1, description="1h30m, 2h, 1.5h, 45m"),
        "minutes": integer(minimum=1, maximum=6000, description="instead of duration"),
        "note": string(max_length=2000), "author": email(description="who worked (a contact; default: the help "
                                                                      "desk)"),
        "spent_at": string(fmt="date-time", description="when the work was done (default: now)")}),
    "Watcher": obj({"email": email(), "name": string(max_length=200), "mailed": boolean()}, required=("email",),
                   additional=True),
    "WatcherCreate": obj({"email": email()}, required=("email",)),
    "WatcherResult": obj({"number": integer(), "email": email(), "added": boolean(), "removed": boolean(),
                          "watchers": array(string(max_length=320), max_items=10_000)},
                         required=("number", "email", "watchers")),
    "Merge": obj({"into": integer(minimum=1, description="the ticket this one is merged into"),
                  "by": email(description="the contact who merges")}, required=("into",)),
    "MergeResult": obj({"number": integer(), "into": integer(),
                        "moved": loose("comments, attachments, time_entries, watchers, message_ids: how many "
                                       "moved")}, required=("number", "into", "moved")),
    "User": obj({"email": email(), "name": string(max_length=200),
                 "role": string(enum=("customer", "staff", "correspondent")),
                 "organisation": string(max_length=200, nullable=True), "auto_registered": boolean(),
                 "undeliverable": boolean(), "blocked": boolean(),
                 "blocked_reason": string(max_length=500, nullable=True)}, required=("email", "role"),
                additional=True),
    "UserCreate": obj({"email": email(), "name": string(max_length=200),
                       "role": string(enum=directory.ROLES),
                       "organisation": string(max_length=200, description="an existing organisation")},
                      required=("email",)),
    "UserPatch": obj({"name": string(max_length=200), "role": string(enum=directory.ROLES),
                      "organisation": string(max_length=200, nullable=True, description="null: none"),
                      "blocked": boolean("true: every mail from this contact is quarantined with blocked_reason"),
                      "blocked_reason": string(max_length=directory.MAX_REASON)}),
    "Organisation": obj({"name": string(max_length=200), "domains": array(string(max_length=253)),
                         "visibility": string(enum=VISIBILITIES)}, required=("name", "domains"), additional=True),
    "OrganisationCreate": obj({"name": string(max_length=200, min_length=1),
                               "domains": array(string(max_length=253), max_items=directory.MAX_DOMAINS),
                               "visibility": string(enum=VISIBILITIES, description=VISIBILITY_DOC)},
                              required=("name",)),
    "OrganisationPatch": obj({"domains": array(string(max_length=253), max_items=directory.MAX_DOMAINS,
                                               description="the organisation's mail domains (replaces them)"),
                              "visibility": string(enum=VISIBILITIES, description=VISIBILITY_DOC)}),
    "SlaPolicy": obj({"name": string(max_length=100), "position": integer(), "active": boolean(),
                      "response_minutes": integer(), "resolution_minutes": integer(),
                      "priorities": array(string(enum=PRIORITY_E)), "types": array(string(enum=TYPE_E)),
                      "organisations": array(string(max_length=200)), "groups": array(string(max_length=100)),
                      "calendar": loose("business hours: tz, days (0 = Monday), start, end, holidays"),
                      "calendar_text": string(max_length=200), "warn_percent": integer(nullable=True),
                      "warn_minutes_before": integer(nullable=True), "escalate_to": array(email()),
                      "notify_assignee": boolean(), "notify_group": boolean(), "source": string(max_length=16)},
                     required=("name", "response_minutes", "resolution_minutes"), additional=True),
    "SlaPolicyPut": obj({
        "response_minutes": integer(minimum=1, maximum=10_000_000),
        "resolution_minutes": integer(minimum=1, maximum=10_000_000),
        "priorities": array(string(enum=PRIORITY_E), max_items=4), "types": array(string(enum=TYPE_E), max_items=4),
        "organisations": array(string(max_length=200), max_items=500),
        "groups": array(string(max_length=100), max_items=500),
        "warn_percent": integer(minimum=0, maximum=100, nullable=True),
        "warn_minutes_before": integer(minimum=0, maximum=10_000_000, nullable=True),
        "escalate_to": array(email(), max_items=50),
        "calendar": string(max_length=200, nullable=True,
                           description="business hours, e.g. 'Europe/Berlin mon-fri 09:00-17:00'; null: around "
                                       "the clock"),
        "holidays": array(string(max_length=10, fmt="date"), max_items=500),
        "notify_assignee": boolean(), "notify_group": boolean(), "active": boolean(),
        "position": integer(minimum=1, maximum=100_000, description="1: tried first; left out: keeps its place"),
    }, required=("response_minutes", "resolution_minutes"),
        description="the whole policy: fields left out take their defaults"),
    "SlaPolicyResult": obj({"policy": ref("SlaPolicy"), "created": boolean(), "changed": boolean()},
                           required=("policy", "created", "changed")),
    "Mail": obj({"id": integer(), "message_id": string(max_length=998, nullable=True),
                 "sender": string(max_length=320, nullable=True), "subject": string(max_length=1 << 16, nullable=True),
                 "source": string(max_length=16), "outcome": string(enum=tuple(MAIL_OUTCOMES)),
                 "reason": string(max_length=4000, nullable=True), "ticket": integer(nullable=True),
                 "received_at": string(fmt="date-time"), "processed_at": string(fmt="date-time", nullable=True),
                 "trace": array(string(max_length=4000), max_items=10_000)},
                required=("id", "outcome"), additional=True),
    "MailResult": obj({"mail_id": integer(), "outcome": string(enum=tuple(MAIL_OUTCOMES)),
                       "reason": string(max_length=4000, nullable=True), "ticket": integer(nullable=True),
                       "comment_id": integer(nullable=True), "trace": array(string(max_length=4000), max_items=10_000)},
                      required=("mail_id", "outcome"), additional=True),
    "Outbox": obj({"id": integer(), "created_at": string(fmt="date-time"), "ticket": integer(nullable=True),
                   "event": string(max_length=32), "recipient": string(max_length=320),
                   "subject": string(max_length=1 << 16), "message_id": string(max_length=255),
                   "status": string(enum=tuple(OUTBOX_STATUSES)), "attempts": integer(),
                   "next_attempt_at": string(fmt="date-time", nullable=True),
                   "sent_at": string(fmt="date-time", nullable=True),
                   "last_error": string(max_length=1 << 16, nullable=True)}, required=("id", "status"),
                  additional=True),
    "Token": obj({"name": string(max_length=100), "scope": string(enum=tuple(TOKEN_SCOPES)),
                  "prefix": string(max_length=16), "created_at": string(fmt="date-time"),
                  "last_used_at": string(fmt="date-time", nullable=True),
                  "revoked_at": string(fmt="date-time", nullable=True), "active": boolean()},
                 required=("name", "scope", "active"), additional=True),
    "TokenCreate": obj({"name": string(max_length=100, min_length=1), "scope": string(enum=tuple(TOKEN_SCOPES))},
                       required=("name",)),
    "TokenCreated": obj({"token": ref("Token"), "secret": string(max_length=100,
                                                                 description="shown once: keep it")},
                        required=("token", "secret")),
    "Health": obj({"status": string(enum=("ok", "unavailable")), "reasons": array(string(max_length=1000)),
                   "checks": loose("database, listeners, http, imap accounts, outbox, quarantine")},
                  required=("status", "reasons", "checks"), additional=True),
}
for _name in ("Ticket", "Comment", "Attachment", "User", "Organisation", "SlaPolicy", "Mail", "Outbox", "Token",
              "Link", "TimeEntry", "Watcher"):
    SCHEMAS[f"{_name}Page"] = page_of(_name)

LIMIT = Param("limit", integer(minimum=1, maximum=pages.MAX_LIMIT), description=f"items per page (default "
              f"{pages.DEFAULT_LIMIT}, at most {pages.MAX_LIMIT})")
CURSOR = Param("cursor", string(max_length=pages.MAX_CURSOR), description="the next_cursor of the previous page")


def _ok(desc: str, schema: str | None, code: int = 200) -> dict[int, tuple[str, spec.Schema | None, str]]:
    return {code: (desc, ref(schema) if schema else None, JSON)}


def _paging(call: Call) -> dict[str, Any]:
    return {"limit": call.query.get("limit", pages.DEFAULT_LIMIT), "cursor": call.query.get("cursor")}


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    from gateway.api.app import json_response

    return json_response(data, status, headers)


# Tickets -----------------------------------------------------------------------------------------------------
async def list_tickets(call: Call) -> Response:
    filters: dict[str, Any] = {k: call.query.get(k) for k in ("status", "priority", "type", "assignee", "group",
                                                               "organisation", "tag", "sla", "text")}
    return call.page(await call.run(tickets.list_tickets, call.app, **filters, **_paging(call)))


async def create_ticket(call: Call) -> Response:
    key = call.request.headers.get("idempotency-key")
    view, created = await call.run(tickets.create_ticket, call.app, call.body, idempotency_key=key, write=True)
    return _json(view, 201 if created else 200,
                 {"Location": f"/api/v1/tickets/{view['number']}"} if created else None)


async def get_ticket(call: Call) -> Response:
    return _json(await call.run(tickets.get_ticket, call.app, call.path["number"]))


async def patch_ticket(call: Call) -> Response:
    from gateway.api.app import Problem, parse_time

    fields = dict(call.body or {})
    by = fields.pop("by", None)
    if "remind_at" in fields and fields["remind_at"] is not None:
        fields["remind_at"] = parse_time(fields["remind_at"])
    if not fields:
        raise Problem(422, "Invalid value", "nothing to change", kind="invalid")
    return _json(await call.run(tickets.change_ticket, call.app, call.path["number"], fields, by=by, write=True))


async def list_comments(call: Call) -> Response:
    internal = call.query.get("internal", True)
    return call.page(await call.run(tickets.list_comments, call.app, call.path["number"], internal=internal,
                                    **_paging(call)))


async def add_comment(call: Call) -> Response:
    b = call.body or {}
    view = await call.run(tickets.add_comment, call.app, call.path["number"], body=b.get("body", ""),
                          internal=bool(b.get("internal", False)), author=b.get("author"),
                          attachments=call.files, write=True)
    return _json(view, 201)


async def list_attachments(call: Call) -> Response:
    return call.page(await call.run(tickets.list_attachments, call.app, call.path["number"], **_paging(call)))


async def get_attachment(call: Call) -> Response:
    from urllib.parse import quote

    meta, data = await call.run(tickets.get_attachment, call.app, call.path["number"], call.path["attachment_id"])
    name = meta["filename"]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name) or "attachment"
    return Response(data, media_type="application/octet-stream", headers={
        # always a download, never rendered: a stored HTML or SVG file cannot run script in the API's origin
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}",
        "X-Original-Content-Type": tickets.clean_content_type(meta["content_type"]),
        "Digest": f"sha-256={_b64(meta['sha256'])}",
    })


def _b64(hexdigest: str) -> str:
    import base64

    return base64.b64encode(bytes.fromhex(hexdigest)).decode()


# Directory ---------------------------------------------------------------------------------------------------
async def list_users(call: Call) -> Response:
    return call.page(await call.run(directory.list_users, call.app, role=call.query.get("role"), **_paging(call)))


async def create_user(call: Call) -> Response:
    b = call.body
    view, _ = await call.run(directory.save_user, call.app, b["email"], name=b.get("name"), role=b.get("role"),
                             organisation=b.get("organisation"), mode="create", write=True)
    return _json(view, 201)


async def get_user(call: Call) -> Response:
    return _json(await call.run(directory.get_user, call.app, call.path["email"]))


async def patch_user(call: Call) -> Response:
    b = dict(call.body or {})
    blocked, reason = b.pop("blocked", None), b.pop("blocked_reason", None)
    view: dict[str, Any] = {}
    if b or blocked is None:
        org = b.get("organisation", None)
        view, _ = await call.run(directory.save_user, call.app, call.path["email"], name=b.get("name"),
                                 role=b.get("role"), organisation="" if "organisation" in b and org is None else org,
                                 mode="update", write=True)
    if blocked is not None:
        view = await call.run(directory.block_user, call.app, call.path["email"], blocked=blocked, reason=reason,
                              create=False, write=True)
    return _json(view)


async def delete_user(call: Call) -> Response:
    await call.run(directory.remove_user, call.app, call.path["email"], write=True)
    return Response(status_code=204)


async def list_orgs(call: Call) -> Response:
    return call.page(await call.run(directory.list_orgs, call.app, **_paging(call)))


async def create_org(call: Call) -> Response:
    b = call.body
    view, _ = await call.run(directory.save_org, call.app, b["name"], domains=b.get("domains") or [],
                             visibility=b.get("visibility"), mode="create", write=True)
    return _json(view, 201)


async def get_org(call: Call) -> Response:
    return _json(await call.run(directory.get_org, call.app, call.path["name"]))


async def patch_org(call: Call) -> Response:
    b = call.body or {}
    view, _ = await call.run(directory.save_org, call.app, call.path["name"], domains=b.get("domains"),
                             replace_domains="domains" in b, visibility=b.get("visibility"), mode="update",
                             write=True)
    return _json(view)


async def delete_org(call: Call) -> Response:
    await call.run(directory.remove_org, call.app, call.path["name"], write=True)
    return Response(status_code=204)


# SLA policies ------------------------------------------------------------------------------------------------
async def list_policies(call: Call) -> Response:
    return call.page(await call.run(sla.list_policies, call.app, **_paging(call), write=True))


async def get_policy(call: Call) -> Response:
    return _json(await call.run(sla.get_policy, call.app, call.path["name"], write=True))


async def put_policy(call: Call) -> Response:
    view, created, changed = await call.run(sla.put_policy, call.app, call.path["name"], call.body, write=True)
    return _json({"policy": view, "created": created, "changed": changed}, 201 if created else 200)


async def delete_policy(call: Call) -> Response:
    await call.run(sla.remove_policy, call.app, call.path["name"], write=True)
    return Response(status_code=204)


# Mail and outbox ---------------------------------------------------------------------------------------------
async def list_mail(call: Call) -> Response:
    return call.page(await call.run(mail.list_mail, call.app, status=call.query.get("status"), **_paging(call)))


async def get_mail(call: Call) -> Response:
    return _json(await call.run(mail.get_mail, call.app, call.path["id"]))


async def replay_mail(call: Call) -> Response:
    return _json(await call.run(mail.replay_mail, call.app, call.path["id"], write=True))


async def list_outbox(call: Call) -> Response:
    return call.page(await call.run(outbox.list_outbox, call.app, status=call.query.get("status"),
                                    **_paging(call)))


async def retry_outbox(call: Call) -> Response:
    return _json(await call.run(outbox.retry_outbox, call.app, call.path["id"], write=True))


# Tokens ------------------------------------------------------------------------------------------------------
async def list_tokens(call: Call) -> Response:
    return call.page(await call.run(tokens.list_tokens, call.app, **_paging(call)))


async def create_token(call: Call) -> Response:
    view, secret = await call.run(tokens.create_token, call.app, call.body["name"],
                                  call.body.get("scope", "read"), write=True)
    return _json({"token": view, "secret": secret}, 201)


async def revoke_token(call: Call) -> Response:
    return _json(await call.run(tokens.revoke_token, call.app, call.path["name"], write=True))


# Service -----------------------------------------------------------------------------------------------------
async def openapi_json(call: Call) -> Response:
    return _json(call.api.document())


async def healthz(call: Call) -> Response:
    assert call.api.health is not None
    report = await call.api.health()
    return _json(report, 200 if report["status"] == "ok" else 503)


async def metrics(call: Call) -> Response:
    assert call.api.metrics is not None
    body, ctype = await call.api.metrics()
    return Response(body, media_type=ctype)


def operations(*, metrics_scope: str | None = None) -> list[Op]:
    P = Param
    number = P("number", integer(minimum=1), "path")
    name = P("name", string(max_length=200), "path")
    email = P("email", string(max_length=320), "path")
    ops = [
        Op("GET", "/tickets", "listTickets", "List tickets (pending reminders due today first, then those where the "
           "customer spoke last, then the rest; newest first within each)",
           "tickets", "read", list_tickets,
           [P("status", string(enum=STATUS_E)), P("priority", string(enum=PRIORITY_E)), P("type", string(enum=TYPE_E)),
            P("assignee", string(max_length=320), description="a staff email, or 'none'"),
            P("group", string(max_length=100), description="a group, or 'none'"),
            P("organisation", string(max_length=200)), P("tag", string(max_length=100)),
            P("sla", string(enum=tickets.SLA_STATES), description="only tickets in this SLA state"),
            P("text", string(max_length=tickets.MAX_TEXT), description="only tickets whose subject or description "
              "holds this text"), LIMIT, CURSOR],
           responses=_ok("A page of tickets", "TicketPage")),
        Op("POST", "/tickets", "createTicket", "Open a ticket (idempotent with Idempotency-Key or external_id)",
           "tickets", "write", create_ticket,
           [P("Idempotency-Key", string(max_length=200), "header",
              "a retried create with the same key returns the first ticket (200), never a second one")],
           body=ref("TicketCreate"),
           responses={201: ("Created", ref("Ticket"), JSON), 200: ("Made before (same key or external_id)",
                                                                   ref("Ticket"), JSON)}),
        Op("GET", "/tickets/{number}", "getTicket", "One ticket", "tickets", "read", get_ticket, [number],
           responses=_ok("The ticket", "Ticket")),
        Op("PATCH", "/tickets/{number}", "changeTicket", "Change a ticket (the rules and notifications of the CLI "
           "and of mail)", "tickets", "write", patch_ticket, [number], body=ref("TicketPatch"),
           responses=_ok("What changed", "TicketChange")),
        Op("GET", "/tickets/{number}/comments", "listComments", "Comments, oldest first", "tickets", "read",
           list_comments, [number, P("internal", boolean(), description="false: leave internal notes out"), LIMIT,
                           CURSOR], responses=_ok("A page of comments", "CommentPage")),
        Op("POST", "/tickets/{number}/comments", "addComment", "Comment (JSON), or comment with attachments "
           "(multipart/form-data: body, internal, author and file parts)", "tickets", "write", add_comment,
           [number], body=ref("CommentCreate"), form=ref("CommentUpload"),
           responses=_ok("The comment", "Comment", 201)),
        Op("GET", "/tickets/{number}/attachments", "listAttachments", "Attachments of a ticket", "tickets", "read",
           list_attachments, [number, LIMIT, CURSOR], responses=_ok("A page of attachments", "AttachmentPage")),
        Op("GET", "/tickets/{number}/attachments/{attachment_id}", "getAttachment", "Download an attachment "
           "(always as a download: Content-Disposition attachment, nosniff)", "tickets", "read", get_attachment,
           [number, P("attachment_id", integer(minimum=1), "path")],
           responses={200: ("The bytes", {"type": "string", "contentMediaType": "application/octet-stream"},
                            "application/octet-stream")}),
        Op("GET", "/users", "listUsers", "Contacts, by email", "directory", "read", list_users,
           [P("role", string(enum=directory.ROLES)), LIMIT, CURSOR], responses=_ok("A page of contacts", "UserPage")),
        Op("POST", "/users", "createUser", "Add a contact", "directory", "admin", create_user,
           body=ref("UserCreate"), responses=_ok("The contact", "User", 201)),
        Op("GET", "/users/{email}", "getUser", "One contact", "directory", "read", get_user, [email],
           responses=_ok("The contact", "User")),
        Op("PATCH", "/users/{email}", "changeUser", "Change a contact", "directory", "admin", patch_user, [email],
           body=ref("UserPatch"), responses=_ok("The contact", "User")),
        Op("DELETE", "/users/{email}", "removeUser", "Remove a contact no ticket refers to", "directory", "admin",
           delete_user, [email], responses={204: ("Removed", None, JSON),
                                            409: ("Still referred to", ref("Problem"), "application/problem+json")}),
        Op("GET", "/organisations", "listOrganisations", "Organisations, by name", "directory", "read", list_orgs,
           [LIMIT, CURSOR], responses=_ok("A page of organisations", "OrganisationPage")),
        Op("POST", "/organisations", "createOrganisation", "Add an organisation", "directory", "admin", create_org,
           body=ref("OrganisationCreate"), responses=_ok("The organisation", "Organisation", 201)),
        Op("GET", "/organisations/{name}", "getOrganisation", "One organisation", "directory", "read", get_org,
           [name], responses=_ok("The organisation", "Organisation")),
        Op("PATCH", "/organisations/{name}", "changeOrganisation", "Set an organisation's domains or visibility",
           "directory", "admin", patch_org, [name], body=ref("OrganisationPatch"),
           responses=_ok("The organisation", "Organisation")),
        Op("DELETE", "/organisations/{name}", "removeOrganisation", "Remove an organisation without contacts or "
           "tickets", "directory", "admin", delete_org, [name], responses={204: ("Removed", None, JSON)}),
        Op("GET", "/sla-policies", "listSlaPolicies", "SLA policies in the order they are tried", "sla", "read",
           list_policies, [LIMIT, CURSOR], responses=_ok("A page of policies", "SlaPolicyPage")),
        Op("GET", "/sla-policies/{name}", "getSlaPolicy", "One SLA policy", "sla", "read", get_policy, [name],
           responses=_ok("The policy", "SlaPolicy")),
        Op("PUT", "/sla-policies/{name}", "putSlaPolicy", "Create or replace an SLA policy (201 created; 200 with "
           "changed true or false)", "sla", "admin", put_policy, [name], body=ref("SlaPolicyPut"),
           responses={201: ("Created", ref("SlaPolicyResult"), JSON),
                      200: ("Replaced or unchanged (see changed)", ref("SlaPolicyResult"), JSON)}),
        Op("DELETE", "/sla-policies/{name}", "removeSlaPolicy", "Remove an SLA policy (tickets keep their "
           "deadlines)", "sla", "admin", delete_policy, [name], responses={204: ("Removed", None, JSON)}),
        Op("GET", "/mail", "listMail", "Inbound mail, newest first", "mail", "read", list_mail,
           [P("status", string(enum=tuple(MAIL_OUTCOMES))), LIMIT, CURSOR],
           responses=_ok("A page of mail", "MailPage")),
        Op("GET", "/mail/{id}", "getMail", "One inbound mail with its decision trace", "mail", "read", get_mail,
           [P("id", integer(minimum=1), "path")], responses=_ok("The mail", "Mail")),
        Op("POST", "/mail/{id}/replay", "replayMail", "Run a quarantined or rejected mail through the pipeline "
           "again", "mail", "admin", replay_mail, [P("id", integer(minimum=1), "path")],
           responses=_ok("The result", "MailResult")),
        Op("GET", "/outbox", "listOutbox", "Outgoing mail, newest first", "outbox", "read", list_outbox,
           [P("status", string(enum=tuple(OUTBOX_STATUSES))), LIMIT, CURSOR],
           responses=_ok("A page of outgoing mail", "OutboxPage")),
        Op("POST", "/outbox/{id}/retry", "retryOutbox", "Queue a failed or deferred mail again, due now", "outbox",
           "admin", retry_outbox, [P("id", integer(minimum=1), "path")], responses=_ok("The row", "Outbox")),
        Op("GET", "/tokens", "listTokens", "API tokens (never their secrets)", "tokens", "admin", list_tokens,
           [LIMIT, CURSOR], responses=_ok("A page of tokens", "TokenPage")),
        Op("POST", "/tokens", "createToken", "Create a token (the secret is shown once)", "tokens", "admin",
           create_token, body=ref("TokenCreate"), responses=_ok("The token and its secret", "TokenCreated", 201)),
        Op("DELETE", "/tokens/{name}", "revokeToken", "Revoke a token", "tokens", "admin", revoke_token, [name],
           responses=_ok("The revoked token", "Token")),
        Op("GET", "/openapi.json", "openapi", "This document", "service", None, openapi_json,
           responses={200: ("OpenAPI 3.1", loose(), JSON)}),
        Op("GET", "/healthz", "health", "Health: database, listeners, IMAP accounts, outbox age, quarantine (200 "
           "or 503 with the reasons)", "service", None, healthz,
           responses={200: ("Healthy", ref("Health"), JSON), 503: ("Unhealthy", ref("Health"), JSON)}),
        Op("GET", "/metrics", "metrics", "Prometheus metrics (text format)", "service", metrics_scope, metrics,
           responses={200: ("Metrics", {"type": "string"}, "text/plain")}),
    ]
    for spec_ in EXTENSIONS:
        module, _, func = spec_.partition(":")
        ops += getattr(importlib.import_module(module), func or "operations")()
    return ops

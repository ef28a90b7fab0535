"""Staff work on a ticket in the HTTP API (gateway.api.routes EXTENSIONS): links, time entries, watchers and
merge under /api/v1/tickets/{number}/..., calling gateway.ops.work (the CLI's operations, the rules of
gateway.workflow that mail commands follow too). Errors are problem+json: 404 (no such ticket, link or
watcher), 409 (a rule refuses: merging a merged ticket, two tickets blocking each other), 422 (a bad kind,
duration or address)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.responses import Response

from gateway.ops import work

if TYPE_CHECKING:
    from gateway.api.app import Call
    from gateway.api.spec import Op


def _json(data: Any, status: int = 200) -> Response:
    from gateway.api.app import json_response

    return json_response(data, status)


def _paging(call: Call) -> dict[str, Any]:
    from gateway.ops import pages

    return {"limit": call.query.get("limit", pages.DEFAULT_LIMIT), "cursor": call.query.get("cursor")}


async def list_links(call: Call) -> Response:
    return call.page(await call.run(work.list_links, call.app, call.path["number"], **_paging(call)))


async def add_link(call: Call) -> Response:
    b = call.body
    result = await call.run(work.link_tickets, call.app, call.path["number"], b["number"], b["kind"], write=True)
    return _json(result, 201 if result["created"] else 200)


async def remove_link(call: Call) -> Response:
    await call.run(work.unlink_tickets, call.app, call.path["number"], call.path["other"], call.query.get("kind"),
                   write=True)
    return Response(status_code=204)


async def list_time(call: Call) -> Response:
    return call.page(await call.run(work.list_time, call.app, call.path["number"], **_paging(call)))


async def add_time(call: Call) -> Response:
    from gateway.api.app import Problem, parse_time

    b = call.body or {}
    if ("duration" in b) == ("minutes" in b):
        raise Problem(422, "Invalid value", "give duration or minutes (one of them)", kind="invalid")
    at = parse_time(b["spent_at"]) if b.get("spent_at") else None
    entry = await call.run(work.log_time, call.app, call.path["number"], b.get("duration", b.get("minutes")),
                           note=b.get("note", ""), by=b.get("author"), at=at, write=True)
    return _json(entry, 201)


async def list_watchers(call: Call) -> Response:
    return call.page(await call.run(work.list_watchers, call.app, call.path["number"], **_paging(call)))


async def add_watcher(call: Call) -> Response:
    result = await call.run(work.watch, call.app, call.path["number"], call.body["email"], write=True)
    return _json(result, 201 if result["added"] else 200)


async def remove_watcher(call: Call) -> Response:
    await call.run(work.unwatch, call.app, call.path["number"], call.path["email"], write=True)
    return Response(status_code=204)


async def merge(call: Call) -> Response:
    b = call.body
    return _json(await call.run(work.merge, call.app, call.path["number"], b["into"], by=b.get("by"), write=True))


def operations() -> list[Op]:
    from gateway.api.spec import Op, Param, integer, ref, string
    from gateway.ops import pages

    json = "application/json"
    number = Param("number", integer(minimum=1), "path")
    problem = ("Refused by a rule", ref("Problem"), "application/problem+json")
    limit = Param("limit", integer(minimum=1, maximum=pages.MAX_LIMIT), description="items per page")
    cursor = Param("cursor", string(max_length=pages.MAX_CURSOR), description="the next_cursor of the previous page")
    return [
        Op("GET", "/tickets/{number}/links", "listLinks", "The ticket's links, as read from it", "tickets", "read",
           list_links, [number, limit, cursor], responses={200: ("The links", ref("LinkPage"), json)}),
        Op("POST", "/tickets/{number}/links", "addLink", "Link the ticket to another (201 new, 200 known)",
           "tickets", "write", add_link, [number], body=ref("LinkCreate"),
           responses={201: ("Linked", ref("LinkResult"), json), 200: ("Linked already", ref("LinkResult"), json),
                      409: problem}),
        Op("DELETE", "/tickets/{number}/links/{other}", "removeLink", "Remove the links between two tickets "
           "(?kind= only that kind)", "tickets", "write", remove_link,
           [number, Param("other", integer(minimum=1), "path"), Param("kind", string(max_length=32))],
           responses={204: ("Removed", None, json)}),
        Op("GET", "/tickets/{number}/time-entries", "listTimeEntries", "Time logged on the ticket, oldest first, "
           "with the total (total_minutes)", "tickets", "read", list_time, [number, limit, cursor],
           responses={200: ("A page of time entries", ref("TimeEntryPage"), json)}),
        Op("POST", "/tickets/{number}/time-entries", "addTimeEntry", "Log time on the ticket", "tickets", "write",
           add_time, [number], body=ref("TimeEntryCreate"),
           responses={201: ("The entry and the ticket's total", ref("TimeEntry"), json)}),
        Op("GET", "/tickets/{number}/watchers", "listWatchers", "The ticket's watchers", "tickets", "read",
           list_watchers, [number, limit, cursor], responses={200: ("The watchers", ref("WatcherPage"), json)}),
        Op("POST", "/tickets/{number}/watchers", "addWatcher", "Add a watcher (mailed about the ticket; 201 new, "
           "200 watching already)", "tickets", "write", add_watcher, [number], body=ref("WatcherCreate"),
           responses={201: ("Added", ref("WatcherResult"), json), 200: ("Watching already", ref("WatcherResult"),
                                                                         json)}),
        Op("DELETE", "/tickets/{number}/watchers/{email}", "removeWatcher", "Remove a watcher", "tickets", "write",
           remove_watcher, [number, Param("email", string(max_length=320), "path")],
           responses={204: ("Removed", None, json)}),
        Op("POST", "/tickets/{number}/merge", "mergeTicket", "Merge the ticket into another: comments, attachments, "
           "time entries, watchers and Message-IDs move; it closes and points there; mail to it lands there",
           "tickets", "write", merge, [number], body=ref("Merge"),
           responses={200: ("Merged", ref("MergeResult"), json), 409: problem}),
    ]


__all__ = ["operations"]

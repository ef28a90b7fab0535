"""Zammad (REST API v1, token access). Customers by `customer_id: "guess:EMAIL"` (found or created by Zammad
with the ticket); our reference is a tag, found again by a search on it; comments and attachments are
articles of type note (attachments base64 in the article). Polling: the ticket search on updated_at.
Zammad has no request participants: Cc watchers stay in the gateway."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from gateway.addresses import read_author
from gateway.backends.desk import (
    CheckLine,
    Desk,
    NewRequest,
    Rejected,
    RemoteComment,
    RemoteRef,
    RemoteTicket,
    minutes_since,
    parse_time,
)


class Zammad(Desk):
    kind = "zammad"
    signature_algorithm = "sha1"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._states: dict[int, str] | None = None

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Token token={self.settings.secret()}"}

    async def whoami(self) -> str:
        return str((await self.get_json("/api/v1/users/me"))["id"])

    async def customer(self, email_addr: str, name: str) -> str:
        return f"guess:{email_addr}"  # Zammad finds or creates the customer with the ticket

    async def create(self, req: NewRequest, customer_id: str) -> RemoteRef:
        if not req.request_type:
            raise Rejected("zammad: no group mapped for this ticket type ([backend.request_types])")
        out = await self.send_json("POST", "/api/v1/tickets", {
            "title": req.subject[:250], "group": req.request_type, "customer_id": customer_id,
            "tags": req.ref,
            "article": {"subject": req.subject[:250], "body": req.description, "content_type": "text/plain",
                        "type": "note", "internal": False}})
        return RemoteRef(key=str(out["id"]), id=str(out.get("number") or ""))

    async def find(self, ref: str) -> RemoteRef | None:
        found = await self._search(f'tags:"{ref}"', limit=5)
        if not found:
            return None
        first = min(found, key=lambda t: int(t["id"]))
        return RemoteRef(key=str(first["id"]), id=str(first.get("number") or ""))

    async def _search(self, query: str, *, limit: int, page: int = 1, sort: bool = False) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"query": query, "limit": limit, "page": page, "expand": "true"}
        if sort:
            params.update(sort_by="updated_at", order_by="asc")
        out = await self.get_json("/api/v1/tickets/search", params=params)
        if isinstance(out, list):  # expand=true: the tickets themselves
            return [t for t in out if isinstance(t, dict)]
        assets = ((out or {}).get("assets") or {}).get("Ticket") or {}  # else ids and assets
        return [assets[str(i)] for i in (out or {}).get("tickets") or [] if str(i) in assets]

    async def comment(self, key: str, body: str, internal: bool) -> str:
        out = await self.send_json("POST", "/api/v1/ticket_articles", {
            "ticket_id": int(key), "body": body, "content_type": "text/plain", "type": "note",
            "internal": internal})
        return str(out["id"])

    async def attach(self, key: str, filename: str, content_type: str, data: bytes, internal: bool) -> str:
        out = await self.send_json("POST", "/api/v1/ticket_articles", {
            "ticket_id": int(key), "body": f"Attachment: {filename}", "content_type": "text/plain",
            "type": "note", "internal": internal,
            "attachments": [{"filename": filename, "data": base64.b64encode(data).decode("ascii"),
                             "mime-type": content_type}]})
        return str(out["id"])

    async def update(self, key: str, *, status: str | None = None, priority: str | None = None) -> None:
        body: dict[str, Any] = {}
        if status is not None:
            body["state"] = status
        if priority is not None:
            body["priority"] = priority
        if body:
            await self.send_json("PUT", f"/api/v1/tickets/{int(key)}", body)

    async def states(self) -> dict[int, str]:
        if self._states is None:
            self._states = {int(s["id"]): str(s["name"]) for s in await self.get_json("/api/v1/ticket_states")}
        return self._states

    async def _ticket(self, t: dict[str, Any]) -> RemoteTicket:
        state = t.get("state")
        if not isinstance(state, str):
            state = (await self.states()).get(int(t.get("state_id") or 0), "")
        return RemoteTicket(key=str(t["id"]), id=str(t.get("number") or ""), status=state,
                            updated=parse_time(t.get("updated_at")))

    async def updated_since(self, since: datetime | None, now: datetime, max_pages: int) -> list[RemoteTicket]:
        query = f"updated_at:>=now-{minutes_since(since, now)}m"
        found: list[RemoteTicket] = []
        for page in range(1, max_pages + 1):
            batch = await self._search(query, limit=self.page_size, page=page, sort=True)
            found += [await self._ticket(t) for t in batch]
            if len(batch) < self.page_size:
                break
        return found

    async def read(self, key: str) -> RemoteTicket:
        return await self._ticket(await self.get_json(f"/api/v1/tickets/{int(key)}", params={"expand": "true"}))

    async def comments(self, key: str, limit: int) -> list[RemoteComment]:
        from gateway.quotes import html_to_text

        out: list[RemoteComment] = []
        for a in (await self.get_json(f"/api/v1/ticket_articles/by_ticket/{int(key)}"))[:limit]:
            if a.get("sender") == "System":
                continue
            body = str(a.get("body") or "")
            if str(a.get("content_type", "")).startswith("text/html"):
                body = html_to_text(body)
            who = read_author([str(a.get("from") or "")])  # "Name <addr>", or a name alone
            addr = who.addr or ""
            name = who.name or ("" if addr else str(a.get("from") or "").strip())
            sender = a.get("sender")
            out.append(RemoteComment(
                id=str(a["id"]), body=body, public=not a.get("internal", False),
                author_id=str(a.get("created_by_id") or ""), author_email=addr if "@" in addr else "",
                author_name=name or (addr if "@" not in addr else ""),
                is_agent=None if sender is None else sender == "Agent", created=parse_time(a.get("created_at"))))
        return out

    async def check(self) -> list[CheckLine]:
        s = self.settings
        me = await self.get_json("/api/v1/users/me")
        lines = [CheckLine(True, f"credentials: signed in as {me.get('login') or me.get('email') or me['id']}")]
        groups = {str(g["name"]) for g in await self.get_json("/api/v1/groups")}
        for local, g in sorted(s.request_types.items()):
            lines.append(CheckLine(g in groups, f"group {local} -> {g!r}" + ("" if g in groups else " unknown")))
        if not s.request_types:
            lines.append(CheckLine(False, "groups: none mapped ([backend.request_types])"))
        prios = {str(p["name"]) for p in await self.get_json("/api/v1/ticket_priorities")}
        for local, p in sorted(s.priorities.items()):
            lines.append(CheckLine(p in prios, f"priority {local} -> {p!r}" + ("" if p in prios else " unknown")))
        states = set((await self.states()).values())
        for remote, local in sorted(s.statuses.items()):
            lines.append(CheckLine(remote in states, f"state {remote!r} -> {local}"
                                   + ("" if remote in states else ": no such ticket state")))
        return lines

    @staticmethod
    def webhook_keys(payload: Any) -> list[str]:
        t = payload.get("ticket") if isinstance(payload, dict) else None
        return [str(t["id"])] if isinstance(t, dict) and t.get("id") is not None else []

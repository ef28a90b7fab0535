"""OpenText SMAX (Service Management Automation X) REST API: a session from the authentication endpoint (the
LWSSO_COOKIE_KEY cookie, renewed on 401), entities through EMS (`/rest/<tenant>/ems/...`, bulk create and
update), comments through the collaboration API, files through `ces/attachment`.

Customers are Person records, found by Email; a new one is created with a bulk CREATE and becomes visible
asynchronously (Pending: the push is tried again shortly, and the person is not created twice). Our reference
goes into the request's ExternalProcessReference (or reference_field). Polling: LastUpdateTime > the last
poll, in pages (size/skip). SMAX has no request participants."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import httpx

from gateway.backends.desk import (
    CheckLine,
    Desk,
    DeskDown,
    NewRequest,
    Pending,
    RateLimited,
    Rejected,
    RemoteComment,
    RemoteRef,
    RemoteTicket,
    parse_time,
    retry_after,
)

_SAFE = re.compile(r"^[A-Za-z0-9._%+@-]{1,320}$")
LAYOUT = "Id,Status,LastUpdateTime,RequestedByPerson"


def _quote(value: str) -> str:
    """A value for an EMS filter: only characters that need no quoting at all (addresses, our references)."""
    if not _SAFE.match(value):
        raise Rejected(f"smax: {value!r} cannot be used in a query")
    return f"'{value}'"


class Smax(Desk):
    kind = "smax"
    signature_algorithm = "sha256"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._token: str | None = None
        self._persons: dict[str, tuple[str, str]] = {}

    @property
    def rest(self) -> str:
        return f"{self.settings.url}/rest/{self.settings.tenant_id}/"

    async def login(self) -> None:
        s = self.settings
        r = await self.client.post(f"{s.url}/auth/authentication-endpoint/authenticate/login",
                                   params={"TENANTID": s.tenant_id}, json={"login": s.user, "password": s.secret()},
                                   timeout=s.timeout)
        if r.status_code == 429:
            raise RateLimited("smax: login -> 429", retry_after(r.headers.get("Retry-After")))
        if r.status_code != 200 or not r.text.strip():
            raise DeskDown(f"smax: login as {s.user} refused ({r.status_code})")
        self._token = r.text.strip()

    async def before_request(self) -> None:
        if self._token is None:
            try:
                await self.login()
            except httpx.TransportError as e:
                raise DeskDown(f"smax: login failed: {type(e).__name__}") from None

    async def on_unauthorised(self) -> bool:
        await self.login()
        return True

    def auth_headers(self) -> dict[str, str]:
        return {"Cookie": f"LWSSO_COOKIE_KEY={self._token}"} if self._token else {}

    async def ems(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        out = await self.get_json(path, base=self.rest, params={**params, "TENANTID": self.settings.tenant_id})
        return [e.get("properties") or {} for e in (out or {}).get("entities") or []]

    async def bulk(self, operation: str, entity_type: str, properties: dict[str, Any]) -> dict[str, Any]:
        out = await self.send_json("POST", "ems/bulk", {
            "entities": [{"entity_type": entity_type, "properties": properties}], "operation": operation},
            base=self.rest, params={"TENANTID": self.settings.tenant_id})
        results = (out or {}).get("entity_result_list") or [{}]
        if results[0].get("completion_status") != "OK":
            raise Rejected(f"smax: {operation} {entity_type} failed: {json.dumps(results[0])[:300]}")
        return ((results[0].get("entity") or {}).get("properties")) or {}

    async def whoami(self) -> str:
        found = await self.ems("ems/Person", {"filter": f"Upn = {_quote(self.settings.user)}",
                                              "layout": "Id,Name,Email"})
        if not found:
            raise Rejected(f"smax: no Person with Upn {self.settings.user!r} (the integration user)")
        return str(found[0]["Id"])

    async def person(self, email_addr: str) -> dict[str, Any] | None:
        found = await self.ems("ems/Person", {"filter": f"Email = {_quote(email_addr)}", "layout": "Id,Name,Email"})
        return found[0] if found else None

    async def customer(self, email_addr: str, name: str) -> str:
        p = await self.person(email_addr)
        if p is not None:
            return str(p["Id"])
        raise Pending(f"smax: no person {email_addr} yet")

    async def create_person(self, email_addr: str, name: str) -> None:
        first, _, last = (name or email_addr.partition("@")[0]).partition(" ")
        await self.bulk("CREATE", "Person", {"FirstName": first or email_addr, "LastName": last or first or "-",
                                             "Email": email_addr, "Upn": email_addr})

    async def create(self, req: NewRequest, customer_id: str) -> RemoteRef:
        props: dict[str, Any] = {
            "DisplayLabel": req.subject[:140], "Description": req.description, "RequestedByPerson": customer_id,
            "RequestedForPerson": customer_id, "CreationSource": "CreationSourceExternal",
            self.settings.reference_field: req.ref}
        if req.request_type:
            props["Category"] = req.request_type
        made = await self.bulk("CREATE", "Request", props)
        if not made.get("Id"):
            raise Rejected("smax: CREATE Request returned no Id")
        return RemoteRef(key=str(made["Id"]))

    async def find(self, ref: str) -> RemoteRef | None:
        found = await self.ems("ems/Request", {"filter": f"{self.settings.reference_field} = {_quote(ref)}",
                                               "layout": "Id"})
        if not found:
            return None
        return RemoteRef(key=str(min(found, key=lambda p: str(p["Id"]))["Id"]))

    async def comment(self, key: str, body: str, internal: bool) -> str:
        out = await self.send_json("POST", f"collaboration/comments/Request/{key}", {
            "IsSystem": False, "Body": body, "PrivacyType": "INTERNAL" if internal else "PUBLIC",
            "Submitter": {"UserId": await self.me()}, "ActualInterface": "API", "CommentFrom": "User",
            "FunctionalPurpose": "EndUserComment"}, base=self.rest, params={"TENANTID": self.settings.tenant_id})
        return str(out["Id"])

    async def attach(self, key: str, filename: str, content_type: str, data: bytes, internal: bool) -> str:
        r = await self.request("POST", "ces/attachment", base=self.rest, params={"TENANTID": self.settings.tenant_id},
                               files=[("files[]", (filename, data, content_type))])
        up = r.json()
        current = await self.ems("ems/Request", {"filter": f"Id = {_quote(key)}", "layout": "Id,RequestAttachments"})
        if not current:
            raise Rejected(f"smax: request {key} not found")
        attachments = json.loads(current[0].get("RequestAttachments") or '{"complexTypeProperties": []}')
        items = attachments.get("complexTypeProperties") or []
        items.append({"properties": {"id": up["guid"], "file_name": up.get("name", filename),
                                     "file_extension": filename.rpartition(".")[2] if "." in filename else "",
                                     "size": up.get("contentLength", len(data)),
                                     "mime_type": up.get("contentType", content_type),
                                     "Creator": await self.me()}})
        await self.bulk("UPDATE", "Request", {"Id": key,
                                              "RequestAttachments": json.dumps({"complexTypeProperties": items})})
        return str(up["guid"])

    async def update(self, key: str, *, status: str | None = None, priority: str | None = None) -> None:
        props: dict[str, Any] = {"Id": key}
        if status is not None:
            props["Status"] = status
        if priority is not None:
            props["Priority"] = priority
        if len(props) > 1:
            await self.bulk("UPDATE", "Request", props)

    async def updated_since(self, since: datetime | None, now: datetime, max_pages: int) -> list[RemoteTicket]:
        start = (since or now - timedelta(days=1)) - timedelta(minutes=2)
        ms = int(start.timestamp() * 1000)
        found: list[RemoteTicket] = []
        for page in range(max_pages):
            batch = await self.ems("ems/Request", {"filter": f"LastUpdateTime > {ms}", "layout": LAYOUT,
                                                   "order": "LastUpdateTime asc", "size": self.page_size,
                                                   "skip": page * self.page_size})
            found += [_ticket(p) for p in batch]
            if len(batch) < self.page_size:
                break
        return found

    async def read(self, key: str) -> RemoteTicket:
        found = await self.ems("ems/Request", {"filter": f"Id = {_quote(key)}", "layout": LAYOUT})
        if not found:
            raise Rejected(f"smax: request {key} not found", 404)
        return _ticket(found[0])

    async def comments(self, key: str, limit: int) -> list[RemoteComment]:
        from gateway.quotes import html_to_text

        out: list[RemoteComment] = []
        rows = await self.get_json(f"collaboration/comments/Request/{key}", base=self.rest,
                                   params={"TENANTID": self.settings.tenant_id})
        for c in (rows or [])[:limit]:
            if c.get("IsSystem"):
                continue
            uid = str((c.get("Submitter") or {}).get("UserId") or "")
            name, addr = await self._person_by_id(uid)
            out.append(RemoteComment(
                id=str(c["Id"]), body=html_to_text(str(c.get("Body") or "")),
                public=c.get("PrivacyType") != "INTERNAL", author_id=uid, author_email=addr, author_name=name,
                created=parse_time(c.get("CreateTime"))))
        return out

    async def _person_by_id(self, uid: str) -> tuple[str, str]:
        if not uid:
            return "", ""
        if uid not in self._persons:
            found = await self.ems("ems/Person", {"filter": f"Id = {_quote(uid)}", "layout": "Id,Name,Email"})
            p = found[0] if found else {}
            self._persons[uid] = (str(p.get("Name") or ""), str(p.get("Email") or ""))
        return self._persons[uid]

    async def check(self) -> list[CheckLine]:
        s = self.settings
        lines = [CheckLine(True, f"credentials: signed in as {s.user} (person {await self.me()})")]
        for local, cat in sorted(s.request_types.items()):
            found = await self.ems("ems/ITProcessRecordCategory",
                                   {"filter": f"Id = {_quote(cat)}", "layout": "Id,DisplayLabel"})
            lines.append(CheckLine(bool(found), f"category {local} -> {cat}"
                                   + (f" ({found[0].get('DisplayLabel', '')})" if found else " unknown")))
        if s.statuses:
            lines.append(CheckLine(True, f"statuses: {len(s.statuses)} mapped (SMAX's REST API lists no status "
                                   "values: not verified)"))
        return lines

    @staticmethod
    def webhook_keys(payload: Any) -> list[str]:
        if not isinstance(payload, dict):
            return []
        props = (payload.get("entity") or {}).get("properties") if isinstance(payload.get("entity"), dict) else None
        key = (props or {}).get("Id") or payload.get("Id") or payload.get("id")
        return [str(key)] if key else []


def _ticket(p: dict[str, Any]) -> RemoteTicket:
    return RemoteTicket(key=str(p["Id"]), status=str(p.get("Status") or ""),
                        updated=parse_time(p.get("LastUpdateTime")))

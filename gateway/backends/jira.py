"""Jira Service Management (Cloud REST API; Data Center with a personal access token works the same).

Requests are made through the servicedeskapi (create, comments, attachments, participants, customers) and the
platform API v3 (search, transitions, priority, the signed-in account). Our reference is a label on the request
(requestFieldValues.labels; the request type needs the Labels field) or a line in the description; a create
whose answer was lost is found again with JQL on it. Polling: /rest/api/3/search/jql with nextPageToken and a
relative `updated >= -Nm` (JQL dates are in the account's time zone; a relative one is not).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from gateway.backends.desk import (
    CheckLine,
    Desk,
    DeskDown,
    NewRequest,
    Rejected,
    RemoteComment,
    RemoteRef,
    RemoteTicket,
    minutes_since,
    parse_time,
)

EXPERIMENTAL = {"X-ExperimentalApi": "opt-in"}


class Jira(Desk):
    kind = "jira"
    page_size = 50
    has_participants = True
    signature_algorithm = "sha256"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._project: str | None = None

    def auth_headers(self) -> dict[str, str]:
        s = self.settings
        if s.user:
            return {"Authorization": httpx.BasicAuth(s.user, s.secret())._auth_header}
        return {"Authorization": f"Bearer {s.secret()}"}

    @property
    def sd(self) -> str:
        return self.settings.service_desk_id

    async def project_key(self) -> str:
        if self._project is None:
            info = await self.get_json(f"/rest/servicedeskapi/servicedesk/{self.sd}")
            self._project = str(info.get("projectKey") or "")
            if not self._project:
                raise DeskDown(f"jira: service desk {self.sd} has no projectKey")
        return self._project

    async def whoami(self) -> str:
        me = await self.get_json("/rest/api/3/myself")
        return str(me.get("accountId") or me.get("key") or me.get("name") or "")

    async def customer(self, email_addr: str, name: str) -> str:
        r = await self.request("POST", "/rest/servicedeskapi/customer", params={"strictConflictStatusCode": "true"},
                               json={"email": email_addr, "displayName": name or email_addr}, ok=(200, 201, 409))
        if r.status_code != 409:
            account = str(r.json().get("accountId") or "")
        else:  # exists already: find the account by its address
            users = await self.get_json("/rest/api/3/user/search", params={"query": email_addr, "maxResults": 10})
            same = [u for u in users if str(u.get("emailAddress", "")).lower() == email_addr.lower()]
            pick = same or (users if len(users) == 1 else [])
            if not pick:
                raise Rejected(f"jira: customer {email_addr} exists but cannot be found by user search")
            account = str(pick[0].get("accountId") or "")
        if not account:
            raise Rejected(f"jira: no accountId for customer {email_addr}")
        # make them a customer of this service desk (already one: the desk answers 204 all the same)
        await self.request("POST", f"/rest/servicedeskapi/servicedesk/{self.sd}/customer",
                           json={"accountIds": [account]}, headers=EXPERIMENTAL, ok=(200, 201, 204))
        return account

    async def create(self, req: NewRequest, customer_id: str) -> RemoteRef:
        if not req.request_type:
            raise Rejected("jira: no request type mapped for this ticket type ([backend.request_types])")
        fields: dict[str, Any] = {"summary": req.subject[:250], "description": req.description}
        if self.settings.reference_field == "labels":
            fields["labels"] = [req.ref]
        else:
            fields["description"] = f"{req.description}\n\n(ticket-gateway reference {req.ref})"
        body: dict[str, Any] = {"serviceDeskId": self.sd, "requestTypeId": req.request_type,
                                "requestFieldValues": fields, "raiseOnBehalfOf": customer_id}
        if req.participants:
            body["requestParticipants"] = req.participants
        out = await self.send_json("POST", "/rest/servicedeskapi/request", body)
        return RemoteRef(key=str(out["issueKey"]), id=str(out.get("issueId") or ""))

    async def find(self, ref: str) -> RemoteRef | None:
        project = await self.project_key()
        clause = f'labels = "{ref}"' if self.settings.reference_field == "labels" else f'description ~ "\\"{ref}\\""'
        out = await self.send_json("POST", "/rest/api/3/search/jql",
                                   {"jql": f'project = "{project}" AND {clause}', "fields": ["status"],
                                    "maxResults": 5})
        issues = out.get("issues") or []
        if not issues:
            return None
        first = min(issues, key=lambda i: int(i.get("id") or 0))  # two would be a duplicate: keep the first
        return RemoteRef(key=str(first["key"]), id=str(first.get("id") or ""))

    async def comment(self, key: str, body: str, internal: bool) -> str:
        out = await self.send_json("POST", f"/rest/servicedeskapi/request/{key}/comment",
                                   {"body": body, "public": not internal})
        return str(out["id"])

    async def attach(self, key: str, filename: str, content_type: str, data: bytes, internal: bool) -> str:
        # step 1: a temporary file in the service desk (the XSRF check off, as the API asks)
        r = await self.request("POST", f"/rest/servicedeskapi/servicedesk/{self.sd}/attachTemporaryFile",
                               files={"file": (filename, data, content_type)},
                               headers={"X-Atlassian-Token": "no-check", **EXPERIMENTAL})
        temp = [t["temporaryAttachmentId"] for t in r.json().get("temporaryAttachments") or []]
        if not temp:
            raise Rejected("jira: attachTemporaryFile returned no temporaryAttachmentId")
        # step 2: attach it to the request
        out = await self.send_json("POST", f"/rest/servicedeskapi/request/{key}/attachment",
                                   {"temporaryAttachmentIds": temp, "public": not internal})
        comment = (out or {}).get("comment") or {}
        return str(comment.get("id") or temp[0])

    async def update(self, key: str, *, status: str | None = None, priority: str | None = None) -> None:
        if priority is not None:
            await self.request("PUT", f"/rest/api/3/issue/{key}", json={"fields": {"priority": {"id": priority}}})
        if status is not None:
            out = await self.get_json(f"/rest/api/3/issue/{key}/transitions")
            for t in out.get("transitions") or []:
                if str((t.get("to") or {}).get("name", "")).lower() == status.lower():
                    await self.request("POST", f"/rest/api/3/issue/{key}/transitions",
                                       json={"transition": {"id": t["id"]}})
                    return
            current = await self.read(key)
            if current.status.lower() != status.lower():
                raise Rejected(f"jira: no transition from {current.status!r} to {status!r} for {key}")

    async def participants(self, key: str, customer_ids: list[str]) -> None:
        if customer_ids:
            await self.request("POST", f"/rest/servicedeskapi/request/{key}/participant",
                               json={"accountIds": customer_ids})

    async def updated_since(self, since: datetime | None, now: datetime, max_pages: int) -> list[RemoteTicket]:
        project = await self.project_key()
        body: dict[str, Any] = {"jql": f'project = "{project}" AND updated >= "-{minutes_since(since, now)}m" '
                                       f'ORDER BY updated ASC',
                                "fields": ["status", "updated"], "maxResults": 50}
        found: list[RemoteTicket] = []
        for _ in range(max_pages):
            out = await self.send_json("POST", "/rest/api/3/search/jql", body)
            found += [_ticket(i) for i in out.get("issues") or []]
            token = out.get("nextPageToken")
            if not token or out.get("isLast"):
                break
            body["nextPageToken"] = token
        return found

    async def read(self, key: str) -> RemoteTicket:
        return _ticket(await self.get_json(f"/rest/api/3/issue/{key}", params={"fields": "status,updated"}))

    async def comments(self, key: str, limit: int) -> list[RemoteComment]:
        out: list[RemoteComment] = []
        start = 0
        while len(out) < limit:
            page = await self.get_json(f"/rest/servicedeskapi/request/{key}/comment",
                                       params={"start": start, "limit": 50})
            values = page.get("values") or []
            for c in values:
                a = c.get("author") or {}
                out.append(RemoteComment(
                    id=str(c["id"]), body=str(c.get("body") or ""), public=bool(c.get("public", True)),
                    author_id=str(a.get("accountId") or a.get("key") or ""),
                    author_email=str(a.get("emailAddress") or ""), author_name=str(a.get("displayName") or ""),
                    created=parse_time((c.get("created") or {}).get("iso8601"))))
            if page.get("isLastPage", True) or not values:
                break
            start += len(values)
        return out[:limit]

    async def check(self) -> list[CheckLine]:
        s = self.settings
        lines = [CheckLine(True, f"credentials: signed in as account {await self.me()}")]
        project = await self.project_key()
        lines.append(CheckLine(True, f"service desk {self.sd}: project {project}"))
        types = await self.get_json(f"/rest/servicedeskapi/servicedesk/{self.sd}/requesttype",
                                    params={"limit": 100}, headers=EXPERIMENTAL)
        known = {str(t["id"]): str(t.get("name", "")) for t in types.get("values") or []}
        for local, rid in sorted(s.request_types.items()):
            lines.append(CheckLine(rid in known, f"request type {local} -> {rid}"
                                   + (f" ({known[rid]})" if rid in known else " not in this service desk")))
            if rid in known and s.reference_field == "labels":
                fields = await self.get_json(f"/rest/servicedeskapi/servicedesk/{self.sd}/requesttype/{rid}/field",
                                             headers=EXPERIMENTAL)
                has = any(f.get("fieldId") == "labels" for f in fields.get("requestTypeFields") or [])
                lines.append(CheckLine(has, f"request type {rid}: Labels field (our reference) "
                                       + ("present" if has else "missing: add it or set reference_field = "
                                          "\"description\"")))
        if not s.request_types:
            lines.append(CheckLine(False, "request types: none mapped ([backend.request_types])"))
        prios = {str(p["id"]): str(p.get("name", "")) for p in await self.get_json("/rest/api/3/priority")}
        for local, pid in sorted(s.priorities.items()):
            lines.append(CheckLine(pid in prios, f"priority {local} -> {pid}"
                                   + (f" ({prios[pid]})" if pid in prios else " unknown")))
        statuses = {str(st.get("name", "")).lower()
                    for it in await self.get_json(f"/rest/api/3/project/{project}/statuses")
                    for st in it.get("statuses") or []}
        for remote, local in sorted(s.statuses.items()):
            lines.append(CheckLine(remote.lower() in statuses, f"status {remote!r} -> {local}"
                                   + ("" if remote.lower() in statuses else ": no such status in the project")))
        return lines

    @staticmethod
    def webhook_keys(payload: Any) -> list[str]:
        issue = payload.get("issue") if isinstance(payload, dict) else None
        if isinstance(issue, dict):
            return [str(v) for v in (issue.get("key"), issue.get("id")) if v]
        return []


def _ticket(issue: dict[str, Any]) -> RemoteTicket:
    f = issue.get("fields") or {}
    return RemoteTicket(key=str(issue["key"]), id=str(issue.get("id") or ""),
                        status=str((f.get("status") or {}).get("name") or ""), updated=parse_time(f.get("updated")))

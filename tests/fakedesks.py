"""Fake service desks for the broker's contract tests: real HTTP servers on loopback (free ports), answering
the vendors' documented request and response shapes -- small, and each shape says where it is documented.

Sources of the shapes:
* JSM  -- Atlassian, Jira Service Management Cloud REST API (developer.atlassian.com/cloud/jira/service-desk/rest/):
          api-group-request (POST /rest/servicedeskapi/request, .../comment, .../attachment, .../participant),
          api-group-customer (POST /rest/servicedeskapi/customer, strictConflictStatusCode -> 409),
          api-group-servicedesk (GET servicedesk/{id}, requesttype, requesttype/{id}/field, customer,
          attachTemporaryFile with X-Atlassian-Token: no-check); Jira platform REST API v3
          (developer.atlassian.com/cloud/jira/platform/rest/v3/): api-group-issue-search (POST /rest/api/3/search/jql,
          nextPageToken/isLast), api-group-myself, api-group-issues (transitions, edit), api-group-issue-priorities,
          api-group-projects (project statuses), api-group-user-search; webhook signature: "Managing webhooks"
          (confluence.atlassian.com/adminjiraserver/managing-webhooks-938846912.html: X-Hub-Signature: sha256=<hex>).
* Zammad -- zammad-documentation api/ticket/index.rst (tickets create/search/show/update, customer_id
          "guess:EMAIL"), api/ticket/articles.rst (articles, base64 attachments, by_ticket), api/user.rst
          (users/me), api/group.rst, api/ticket/priorities.rst, api/ticket/states.rst; webhooks:
          admin-docs.zammad.org manage/webhook/payload (X-Hub-Signature, HMAC-SHA1).
* SMAX -- OpenText SMAX REST API as used by Waldur (waldur-mastermind support/backend/smax_utils.py) and the
          SMAX PowerShell module (github Callidus2000/SMAX: Invoke-SMAXBulk, Add-SMAXComment, SMAX-PagingHandler):
          authentication-endpoint login -> token in LWSSO_COOKIE_KEY; GET ems/<Entity>?filter=&layout=&size=&skip=
          -> {entities: [{entity_type, properties}], meta: {completion_status, total_count}}; POST ems/bulk
          {entities, operation} -> {entity_result_list: [{entity, completion_status}], meta}; collaboration/comments;
          ces/attachment (multipart files[]) -> {guid, name, contentType, contentLength}.

Faults: `down` (503), `rate_limit` (the next N requests get 429 with Retry-After), `lose_next_create` (the
request is made, then the connection is dropped without an answer), `max_upload` (413 over it).
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import itertools
import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        self.status, self.body, self.headers = status, body, headers or {}


class Drop(Exception):
    """Close the connection without an answer."""


class FakeDesk:
    kind = ""
    signature = "sha256"

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.log: list[tuple[str, str, Any]] = []
        self.down = False
        self.rate_limit = 0
        self.retry_after = "2"
        self.lose_next_create = False
        self.max_upload = 5 * 1024 * 1024
        self.ids = itertools.count(1001)
        self.server: ThreadingHTTPServer | None = None
        self.stall: threading.Event | None = None  # set: POSTs wait for it (a desk that hangs)
        self.stalled = threading.Event()

    # server -----------------------------------------------------------------------------------------
    def start(self) -> FakeDesk:
        desk = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                try:
                    status, body, headers = desk.dispatch(self.command, unquote(parts.path), query, self.headers, raw)
                except Drop:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                data = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(body, bytes) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def dispatch(self, method: str, path: str, query: dict[str, str], headers: Any,
                 raw: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.stall is not None and method == "POST" and not path.startswith("/auth/"):
            self.stalled.set()
            self.stall.wait(30)
        with self.lock:
            self.log.append((method, path, query))
            if self.down:
                return 503, {"error": "service unavailable"}, {}
            if self.rate_limit > 0:
                self.rate_limit -= 1
                return 429, {"error": "rate limited"}, {"Retry-After": self.retry_after}
            try:
                if not self.authorised(path, headers):
                    raise Reply(401, {"error": "unauthorised"})
                ctype = headers.get("Content-Type") or ""
                body: Any = raw
                if raw and ctype.startswith("application/json"):
                    body = json.loads(raw)
                elif ctype.startswith("multipart/form-data"):
                    body = multipart(ctype, raw)
                out = self.route(method, path, query, headers, body)
                return (200, out, {}) if not isinstance(out, tuple) else (out[0], out[1], {})
            except Reply as r:
                return r.status, r.body, r.headers

    def calls(self, method: str, prefix: str) -> int:
        return sum(1 for m, p, _ in self.log if m == method and p.startswith(prefix))

    def sign(self, body: bytes, secret: bytes) -> str:
        return f"{self.signature}=" + hmac.new(secret, body, getattr(hashlib, self.signature)).hexdigest()

    # per desk ---------------------------------------------------------------------------------------
    def authorised(self, path: str, headers: Any) -> bool:
        raise NotImplementedError

    def route(self, method: str, path: str, q: dict[str, str], headers: Any, body: Any) -> Any:
        raise NotImplementedError


def multipart(ctype: str, raw: bytes) -> dict[str, tuple[str, bytes, str]]:
    msg = email.message_from_bytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw, policy=email.policy.HTTP)
    out: dict[str, tuple[str, bytes, str]] = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        assert isinstance(name, str) and isinstance(payload, bytes)
        out[name] = (part.get_filename() or "", payload, part.get_content_type())
    return out


# Jira Service Management ------------------------------------------------------------------------------
class FakeJira(FakeDesk):
    kind = "jira"
    signature = "sha256"
    ME = "acc-gateway"
    STATUSES = ["Waiting for support", "In progress", "Waiting for customer", "Resolved", "Canceled"]

    def __init__(self) -> None:
        super().__init__()
        self.customers: dict[str, dict[str, Any]] = {}  # email -> user
        self.desk_customers: set[str] = set()
        self.issues: dict[str, dict[str, Any]] = {}
        self.temp: dict[str, tuple[str, bytes]] = {}
        self.counter = itertools.count(1)

    def authorised(self, path: str, headers: Any) -> bool:
        return headers.get("Authorization") == "Basic " + base64.b64encode(b"gw@example.com:jira-token").decode()

    def user(self, account: str) -> dict[str, Any]:
        if account == self.ME:
            return {"accountId": self.ME, "displayName": "Gateway", "emailAddress": "gw@example.com"}
        for u in self.customers.values():
            if u["accountId"] == account:
                return u
        return {"accountId": account, "displayName": account, "emailAddress": ""}

    def issue_json(self, i: dict[str, Any]) -> dict[str, Any]:
        return {"id": i["id"], "key": i["key"], "fields": {"status": {"name": i["status"]}, "updated": i["updated"]}}

    def touch(self, i: dict[str, Any]) -> None:
        i["updated"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"

    def add_comment(self, key: str, body: str, public: bool, author: str) -> dict[str, Any]:
        i = self.issues[key]
        c = {"id": str(next(self.ids)), "body": body, "public": public, "author": self.user(author),
             "created": {"iso8601": now_iso()}}
        i["comments"].append(c)
        self.touch(i)
        return c

    # scenario helpers
    def agent_comment(self, key: str, body: str, internal: bool = False) -> None:
        with self.lock:
            self.customers.setdefault("agent.ann@desk.example", {"accountId": "acc-agent-7",
                                      "displayName": "Ann Agent", "emailAddress": "agent.ann@desk.example"})
            self.add_comment(key, body, not internal, "acc-agent-7")

    def own_comment(self, key: str, body: str) -> None:
        """A comment by the integration account the gateway has no record of (a push whose answer was lost)."""
        with self.lock:
            self.add_comment(key, body, True, self.ME)

    def set_status(self, key: str, status: str) -> None:
        with self.lock:
            self.issues[key]["status"] = status
            self.touch(self.issues[key])

    def keys(self) -> list[str]:
        return sorted(self.issues)

    def comment_bodies(self, key: str) -> list[str]:
        return [c["body"] for c in self.issues[key]["comments"]]

    def attachment_names(self, key: str) -> list[str]:
        return [a["filename"] for a in self.issues[key]["attachments"]]

    def status_of(self, key: str) -> str:
        return str(self.issues[key]["status"])

    def webhook(self, key: str) -> dict[str, Any]:
        return {"webhookEvent": "comment_created", "issue": {"id": self.issues[key]["id"], "key": key}}

    def route(self, method: str, path: str, q: dict[str, str], headers: Any, body: Any) -> Any:
        if method == "GET":
            try:
                return self.meta(path)
            except KeyError:
                pass
        return self.ops(method, path, q, headers, body)

    def meta(self, path: str) -> Any:
        """The read-only lookups `backend check` makes."""
        m = re.fullmatch
        if path == "/rest/api/3/myself":
            return self.user(self.ME)
        if path == "/rest/servicedeskapi/servicedesk/4":
            return {"id": "4", "projectId": "10000", "projectKey": "SD", "projectName": "Support"}
        if path == "/rest/servicedeskapi/servicedesk/4/requesttype":
            return {"size": 2, "start": 0, "limit": 100, "isLastPage": True,
                    "values": [{"id": "10", "name": "Get IT help"}, {"id": "11", "name": "Report a problem"}]}
        if (r := m(r"/rest/servicedeskapi/servicedesk/4/requesttype/(\d+)/field", path)):
            fields = [{"fieldId": "summary"}, {"fieldId": "description"}]
            if r.group(1) == "10":
                fields.append({"fieldId": "labels"})
            return {"requestTypeFields": fields, "canRaiseOnBehalfOf": True, "canAddRequestParticipants": True}
        if path == "/rest/api/3/priority":
            return [{"id": str(n), "name": name} for n, name in enumerate(["Highest", "High", "Medium", "Low"], 1)]
        if path == "/rest/api/3/project/SD/statuses":
            return [{"id": "10001", "name": "Service Request", "statuses": [{"name": s} for s in self.STATUSES]}]
        if path == "/rest/api/3/user/search":
            raise KeyError(path)
        raise KeyError(path)

    def ops(self, method: str, path: str, q: dict[str, str], headers: Any, body: Any) -> Any:
        m = re.fullmatch
        if method == "POST" and path == "/rest/servicedeskapi/customer":
            addr = body["email"].lower()
            if addr in self.customers:
                if q.get("strictConflictStatusCode") == "true":
                    raise Reply(409, {"errorMessage": "A user with that email already exists."})
                raise Reply(400, {"errorMessage": "A user with that email already exists."})
            u = {"accountId": f"acc-{next(self.counter)}", "displayName": body.get("displayName", ""),
                 "emailAddress": addr}
            self.customers[addr] = u
            return 201, u
        if method == "GET" and path == "/rest/api/3/user/search":
            return [u for e, u in self.customers.items() if e == q.get("query", "").lower()]
        if method == "POST" and path == "/rest/servicedeskapi/servicedesk/4/customer":
            self.desk_customers.update(body["accountIds"])
            return 204, None
        if method == "POST" and path == "/rest/servicedeskapi/request":
            return self.create(body)
        if method == "POST" and path == "/rest/api/3/search/jql":
            return self.search(body)
        if (r := m(r"/rest/servicedeskapi/request/([A-Z]+-\d+)/(comment|attachment|participant)", path)):
            return self.request_sub(method, r.group(1), r.group(2), q, body)
        if method == "POST" and path == "/rest/servicedeskapi/servicedesk/4/attachTemporaryFile":
            if headers.get("X-Atlassian-Token") != "no-check":
                raise Reply(403, {"errorMessage": "XSRF check failed"})
            name, data, ctype = body["file"]
            if len(data) > self.max_upload:
                raise Reply(413, {"errorMessage": "file too large"})
            tid = f"temp{next(self.ids)}"
            self.temp[tid] = (name, data)
            return 201, {"temporaryAttachments": [{"temporaryAttachmentId": tid, "fileName": name}]}
        if (r := m(r"/rest/api/3/issue/([A-Z]+-\d+)(/transitions)?", path)):
            return self.issue_op(method, r.group(1), bool(r.group(2)), body)
        raise Reply(404, {"errorMessages": [f"no route {method} {path}"]})

    def create(self, body: dict[str, Any]) -> Any:
        if body.get("requestTypeId") not in ("10", "11"):
            raise Reply(400, {"errorMessage": "request type does not exist"})
        fields = body["requestFieldValues"]
        if "labels" in fields and body["requestTypeId"] != "10":
            raise Reply(400, {"errorMessage": "Field 'labels' is not on the request type"})
        if body.get("raiseOnBehalfOf") not in self.desk_customers:
            raise Reply(400, {"errorMessage": "The reporter is not a customer of this service desk"})
        n = next(self.counter)
        key = f"SD-{n}"
        self.issues[key] = {"id": str(10000 + n), "key": key, "status": "Waiting for support",
                            "summary": fields["summary"], "description": fields.get("description", ""),
                            "labels": list(fields.get("labels") or []), "reporter": body["raiseOnBehalfOf"],
                            "participants": list(body.get("requestParticipants") or []), "comments": [],
                            "attachments": [], "priority": None}
        self.touch(self.issues[key])
        if self.lose_next_create:
            self.lose_next_create = False
            raise Drop()
        return 201, {"issueId": str(10000 + n), "issueKey": key, "requestTypeId": body["requestTypeId"],
                     "serviceDeskId": "4", "currentStatus": {"status": "Waiting for support"},
                     "reporter": self.user(body["raiseOnBehalfOf"]), "_links": {"web": f"/servicedesk/{key}"}}

    def search(self, body: dict[str, Any]) -> Any:
        jql = body["jql"]
        hits = list(self.issues.values())
        if (r := re.search(r'labels = "([^"]+)"', jql)):
            hits = [i for i in hits if r.group(1) in i["labels"]]
        if (r := re.search(r'description ~ "\\"([^"\\]+)\\""', jql)):
            hits = [i for i in hits if r.group(1) in i["description"]]
        if (r := re.search(r'updated >= "-(\d+)m"', jql)):
            limit = datetime.now(UTC).timestamp() - int(r.group(1)) * 60
            hits = [i for i in hits if datetime.strptime(i["updated"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp() >= limit]
            hits.sort(key=lambda i: i["updated"])
        start = int(body.get("nextPageToken") or 0)
        size = int(body.get("maxResults") or 50)
        page = hits[start:start + size]
        out: dict[str, Any] = {"issues": [self.issue_json(i) for i in page], "isLast": start + size >= len(hits)}
        if not out["isLast"]:
            out["nextPageToken"] = str(start + size)
        return out

    def request_sub(self, method: str, key: str, what: str, q: dict[str, str], body: Any) -> Any:
        if key not in self.issues:
            raise Reply(404, {"errorMessage": "no such request"})
        i = self.issues[key]
        if what == "comment" and method == "POST":
            return 201, self.add_comment(key, body["body"], bool(body.get("public", True)), self.ME)
        if what == "comment" and method == "GET":
            start, limit = int(q.get("start", 0)), int(q.get("limit", 50))
            values = i["comments"][start:start + limit]
            return {"start": start, "limit": limit, "size": len(values),
                    "isLastPage": start + limit >= len(i["comments"]), "values": values}
        if what == "attachment" and method == "POST":
            files = [self.temp.pop(t) for t in body["temporaryAttachmentIds"]]
            for name, data in files:
                i["attachments"].append({"filename": name, "size": len(data)})
            c = self.add_comment(key, "", bool(body.get("public", True)), self.ME)
            return 201, {"comment": c, "attachments": {"values": [{"filename": n, "size": len(d)} for n, d in files]}}
        if what == "participant" and method == "POST":
            i["participants"] += body["accountIds"]
            return {"values": [self.user(a) for a in i["participants"]]}
        raise Reply(405, {})

    def issue_op(self, method: str, key: str, transitions: bool, body: Any) -> Any:
        if key not in self.issues:
            raise Reply(404, {"errorMessages": ["Issue does not exist"]})
        i = self.issues[key]
        if transitions and method == "GET":
            return {"transitions": [{"id": str(n), "name": f"to {s}", "to": {"name": s}}
                                    for n, s in enumerate(self.STATUSES, 21) if s != i["status"]]}
        if transitions and method == "POST":
            i["status"] = self.STATUSES[int(body["transition"]["id"]) - 21]
            self.touch(i)
            return 204, None
        if method == "PUT":
            i["priority"] = body["fields"]["priority"]["id"]
            self.touch(i)
            return 204, None
        return self.issue_json(i)


# Zammad -----------------------------------------------------------------------------------------------
class FakeZammad(FakeDesk):
    kind = "zammad"
    signature = "sha1"
    ME = 3
    STATES = {1: "new", 2: "open", 3: "pending reminder", 4: "closed", 5: "merged"}

    def __init__(self) -> None:
        super().__init__()
        self.users: dict[int, dict[str, Any]] = {3: {"id": 3, "login": "gateway", "email": "gw@example.com",
                                                     "firstname": "Gate", "lastname": "Way"},
                                                 7: {"id": 7, "login": "ann", "email": "agent.ann@desk.example",
                                                     "firstname": "Ann", "lastname": "Agent"}}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.articles: dict[int, list[dict[str, Any]]] = {}

    def authorised(self, path: str, headers: Any) -> bool:
        return headers.get("Authorization") == "Token token=zammad-token"

    def ticket_json(self, t: dict[str, Any], expand: bool) -> dict[str, Any]:
        out = {k: v for k, v in t.items() if k != "tags"}
        if expand:
            out["state"] = self.STATES[t["state_id"]]
        return out

    def add_article(self, tid: int, body: str, internal: bool, user: int, sender: str,
                    attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        u = self.users[user]
        a = {"id": next(self.ids), "ticket_id": tid, "from": f"{u['firstname']} {u['lastname']} <{u['email']}>",
             "to": "", "cc": "", "subject": "", "body": body, "content_type": "text/plain", "type": "note",
             "internal": internal, "sender": sender, "created_by_id": user, "created_at": now_iso(),
             "updated_at": now_iso(), "attachments": attachments or []}
        self.articles[tid].append(a)
        self.tickets[tid]["updated_at"] = now_iso()
        return a

    def agent_comment(self, key: str, body: str, internal: bool = False) -> None:
        with self.lock:
            self.add_article(int(key), f"<p>{body}</p>", internal, 7, "Agent")["content_type"] = "text/html"

    def own_comment(self, key: str, body: str) -> None:
        with self.lock:
            self.add_article(int(key), body, False, self.ME, "Agent")

    def set_status(self, key: str, status: str) -> None:
        with self.lock:
            t = self.tickets[int(key)]
            t["state_id"] = next(i for i, n in self.STATES.items() if n == status)
            t["updated_at"] = now_iso()

    def keys(self) -> list[str]:
        return [str(k) for k in sorted(self.tickets)]

    def comment_bodies(self, key: str) -> list[str]:
        return [a["body"] for a in self.articles[int(key)]]

    def attachment_names(self, key: str) -> list[str]:
        return [x["filename"] for a in self.articles[int(key)] for x in a["attachments"]]

    def status_of(self, key: str) -> str:
        return self.STATES[self.tickets[int(key)]["state_id"]]

    def webhook(self, key: str) -> dict[str, Any]:
        return {"ticket": {"id": int(key), "number": self.tickets[int(key)]["number"]}, "article": {}}

    def route(self, method: str, path: str, q: dict[str, str], headers: Any, body: Any) -> Any:
        m = re.fullmatch
        lookups = {"/api/v1/users/me": lambda: self.users[self.ME],
                   "/api/v1/groups": lambda: [{"id": 1, "name": "Users"}, {"id": 2, "name": "2nd Level"}],
                   "/api/v1/ticket_priorities": lambda: [{"id": 1, "name": "1 low"}, {"id": 2, "name": "2 normal"},
                                                         {"id": 3, "name": "3 high"}],
                   "/api/v1/ticket_states": lambda: [{"id": i, "name": n} for i, n in self.STATES.items()]}
        if method == "GET" and path in lookups:
            return lookups[path]()
        if method == "POST" and path == "/api/v1/tickets":
            return self.create(body)
        if method == "GET" and path == "/api/v1/tickets/search":
            return self.search(q)
        if (r := m(r"/api/v1/tickets/(\d+)", path)):
            t = self.tickets.get(int(r.group(1)))
            if t is None:
                raise Reply(404, {"error": "Couldn't find Ticket"})
            if method == "PUT":
                if "state" in body:
                    t["state_id"] = next(i for i, n in self.STATES.items() if n == body["state"])
                if "priority" in body:
                    t["priority_id"] = int(body["priority"][0])
                t["updated_at"] = now_iso()
            return self.ticket_json(t, q.get("expand") == "true")
        if method == "POST" and path == "/api/v1/ticket_articles":
            tid = int(body["ticket_id"])
            atts = []
            for x in body.get("attachments") or []:
                data = base64.b64decode(x["data"])
                if len(data) > self.max_upload:
                    raise Reply(413, {"error": "file too large"})
                atts.append({"id": next(self.ids), "filename": x["filename"], "size": len(data),
                             "preferences": {"Mime-Type": x["mime-type"]}})
            return 201, self.add_article(tid, body["body"], bool(body.get("internal")), self.ME, "Agent", atts)
        if method == "GET" and (r := m(r"/api/v1/ticket_articles/by_ticket/(\d+)", path)):
            return self.articles[int(r.group(1))]
        raise Reply(404, {"error": f"no route {method} {path}"})

    def create(self, body: dict[str, Any]) -> Any:
        if body.get("group") not in ("Users", "2nd Level"):
            raise Reply(422, {"error": "No such group"})
        cust = str(body["customer_id"])
        assert cust.startswith("guess:"), cust
        addr = cust[6:]
        uid = next((u["id"] for u in self.users.values() if u["email"] == addr), None)
        if uid is None:
            uid = next(self.ids)
            self.users[uid] = {"id": uid, "login": addr, "email": addr, "firstname": "", "lastname": ""}
        tid = len(self.tickets) + 1
        self.tickets[tid] = {"id": tid, "number": str(31000 + tid), "title": body["title"], "group_id": 1,
                             "state_id": 1, "priority_id": 2, "customer_id": uid, "tags": body.get("tags", ""),
                             "created_at": now_iso(), "updated_at": now_iso()}
        self.articles[tid] = []
        self.add_article(tid, body["article"]["body"], False, self.ME, "Agent")
        if self.lose_next_create:
            self.lose_next_create = False
            raise Drop()
        return 201, self.ticket_json(self.tickets[tid], False)

    def search(self, q: dict[str, str]) -> Any:
        query = q["query"]
        hits = list(self.tickets.values())
        if (r := re.fullmatch(r'tags:"([^"]+)"', query)):
            hits = [t for t in hits if r.group(1) in t["tags"].split(",")]
        elif (r := re.fullmatch(r"updated_at:>=now-(\d+)m", query)):
            limit = datetime.now(UTC).timestamp() - int(r.group(1)) * 60
            hits = [t for t in hits
                    if datetime.fromisoformat(t["updated_at"].replace("Z", "+00:00")).timestamp() >= limit]
        else:
            raise Reply(422, {"error": f"query not understood by the fake: {query}"})
        if q.get("sort_by") == "updated_at":
            hits.sort(key=lambda t: t["updated_at"])
        limit_n, page = int(q.get("limit", 10)), int(q.get("page", 1))
        hits = hits[(page - 1) * limit_n: page * limit_n]
        if q.get("expand") == "true":
            return [self.ticket_json(t, True) for t in hits]
        return {"tickets": [t["id"] for t in hits], "tickets_count": len(hits),
                "assets": {"Ticket": {str(t["id"]): self.ticket_json(t, False) for t in hits}}}


# SMAX -------------------------------------------------------------------------------------------------
class FakeSmax(FakeDesk):
    kind = "smax"
    signature = "sha256"
    TENANT = "100000002"

    def __init__(self) -> None:
        super().__init__()
        self.tokens: set[str] = set()
        self.persons: dict[str, dict[str, Any]] = {
            "50001": {"Id": "50001", "Name": "Gateway Integration", "Email": "gw@example.com", "Upn": "gateway"},
            "50007": {"Id": "50007", "Name": "Ann Agent", "Email": "agent.ann@desk.example", "Upn": "ann"}}
        self.pending_persons: list[tuple[int, dict[str, Any]]] = []  # visible after N more person queries
        self.person_delay = 1
        self.requests: dict[str, dict[str, Any]] = {}
        self.comments: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, tuple[str, bytes]] = {}
        self.categories = {"11001": "Hardware", "11002": "Access"}

    def authorised(self, path: str, headers: Any) -> bool:
        if path.startswith("/auth/"):
            return True
        cookie = headers.get("Cookie") or ""
        return any(cookie == f"LWSSO_COOKIE_KEY={t}" for t in self.tokens)

    def ms(self) -> int:
        return int(datetime.now(UTC).timestamp() * 1000)

    def agent_comment(self, key: str, body: str, internal: bool = False) -> None:
        with self.lock:
            self.add_comment(key, f"<p>{body}</p>", internal, "50007")

    def add_comment(self, key: str, body: str, internal: bool, user: str) -> dict[str, Any]:
        c = {"Id": f"c{next(self.ids)}", "Body": body, "PrivacyType": "INTERNAL" if internal else "PUBLIC",
             "Submitter": {"UserId": user}, "CreateTime": self.ms(), "IsSystem": False,
             "FunctionalPurpose": "EndUserComment", "ActualInterface": "API"}
        self.comments[key].append(c)
        self.requests[key]["LastUpdateTime"] = self.ms()
        return c

    def own_comment(self, key: str, body: str) -> None:
        with self.lock:
            self.add_comment(key, body, False, "50001")

    def set_status(self, key: str, status: str) -> None:
        with self.lock:
            self.requests[key]["Status"] = status
            self.requests[key]["LastUpdateTime"] = self.ms()

    def keys(self) -> list[str]:
        return sorted(self.requests)

    def comment_bodies(self, key: str) -> list[str]:
        return [c["Body"] for c in self.comments[key]]

    def attachment_names(self, key: str) -> list[str]:
        att = json.loads(self.requests[key].get("RequestAttachments") or '{"complexTypeProperties": []}')
        return [a["properties"]["file_name"] for a in att["complexTypeProperties"]]

    def status_of(self, key: str) -> str:
        return str(self.requests[key]["Status"])

    def webhook(self, key: str) -> dict[str, Any]:
        return {"entity": {"entity_type": "Request", "properties": {"Id": key}}}

    @staticmethod
    def entities(kind: str, rows: list[dict[str, Any]], layout: str | None) -> dict[str, Any]:
        fields = layout.split(",") if layout and layout != "FULL_LAYOUT" else None
        ents = [{"entity_type": kind, "properties": {k: v for k, v in r.items() if fields is None or k in fields},
                 "related_properties": {}} for r in rows]
        return {"entities": ents, "meta": {"completion_status": "OK", "total_count": len(ents)}}

    @staticmethod
    def match(rows: list[dict[str, Any]], flt: str) -> list[dict[str, Any]]:
        if (r := re.fullmatch(r"(\w+) = '([^']*)'", flt)):
            return [x for x in rows if str(x.get(r.group(1), "")).lower() == r.group(2).lower()]
        if (r := re.fullmatch(r"LastUpdateTime > (\d+)", flt)):
            return sorted([x for x in rows if x["LastUpdateTime"] > int(r.group(1))], key=lambda x: x["LastUpdateTime"])
        raise Reply(400, {"meta": {"completion_status": "FAILED", "errorDetails": f"bad filter {flt}"}})

    def route(self, method: str, path: str, q: dict[str, str], headers: Any, body: Any) -> Any:
        base = f"/rest/{self.TENANT}/"
        if path == "/auth/authentication-endpoint/authenticate/login":
            if q.get("TENANTID") != self.TENANT or body != {"login": "gateway", "password": "smax-password"}:
                raise Reply(401, b"Authentication failed")
            tok = f"tok{next(self.ids)}"
            self.tokens.add(tok)
            return tok.encode()
        if not path.startswith(base) or q.get("TENANTID") != self.TENANT:
            raise Reply(404, {"error": f"no route {path}"})
        p = path[len(base):]
        if method == "GET" and p == "ems/Person":
            self.pending_persons = [(n - 1, x) for n, x in self.pending_persons]
            for n, x in self.pending_persons:
                if n <= 0:
                    self.persons[x["Id"]] = x
            self.pending_persons = [(n, x) for n, x in self.pending_persons if n > 0]
            return self.entities("Person", self.match(list(self.persons.values()), q["filter"]), q.get("layout"))
        if method == "GET" and p == "ems/Request":
            rows = self.match(list(self.requests.values()), q["filter"])
            skip, size = int(q.get("skip", 0)), int(q.get("size", 1000))
            return self.entities("Request", rows[skip:skip + size], q.get("layout"))
        if method == "GET" and p == "ems/ITProcessRecordCategory":
            rows = [{"Id": k, "DisplayLabel": v} for k, v in self.categories.items()]
            return self.entities("ITProcessRecordCategory", self.match(rows, q["filter"]), q.get("layout"))
        if method == "POST" and p == "ems/bulk":
            return self.bulk(body)
        if (r := re.fullmatch(r"collaboration/comments/Request/(\w+)", p)):
            key = r.group(1)
            if key not in self.requests:
                raise Reply(404, {"error": "no such request"})
            if method == "GET":
                return self.comments[key]
            return self.add_comment(key, body["Body"], body["PrivacyType"] == "INTERNAL", body["Submitter"]["UserId"])
        if method == "POST" and p == "ces/attachment":
            name, data, ctype = body["files[]"]
            if len(data) > self.max_upload:
                raise Reply(413, {"error": "file too large"})
            guid = f"g{next(self.ids)}"
            self.files[guid] = (name, data)
            return {"guid": guid, "name": name, "contentType": ctype, "contentLength": len(data),
                    "lastModified": self.ms()}
        raise Reply(404, {"error": f"no route {method} {path}"})

    def bulk(self, body: dict[str, Any]) -> Any:
        ent = body["entities"][0]
        kind, props, op = ent["entity_type"], dict(ent["properties"]), body["operation"]
        if kind == "Person" and op == "CREATE":
            pid = str(next(self.ids))
            person = {"Id": pid, "Name": f"{props['FirstName']} {props['LastName']}", "Email": props["Email"],
                      "Upn": props.get("Upn", "")}
            self.pending_persons.append((self.person_delay, person))
            return {"entity_result_list": [{"entity": {"entity_type": "Person", "properties": {}},
                                            "completion_status": "OK"}], "meta": {"completion_status": "OK"}}
        if kind == "Request" and op == "CREATE":
            known = props.get("Category", "11001") in self.categories
            if props.get("RequestedByPerson") not in self.persons or not known:
                return {"entity_result_list": [{"entity": {"entity_type": "Request", "properties": {}},
                                                "completion_status": "FAILED", "errors": [{"message": "no person"}]}],
                        "meta": {"completion_status": "FAILED"}}
            rid = str(next(self.ids))
            props.update(Id=rid, Status="RequestStatusReady", LastUpdateTime=self.ms())
            self.requests[rid] = props
            self.comments[rid] = []
            if self.lose_next_create:
                self.lose_next_create = False
                raise Drop()
            return {"entity_result_list": [{"entity": {"entity_type": "Request", "properties": {"Id": rid}},
                                            "completion_status": "OK"}], "meta": {"completion_status": "OK"}}
        if kind == "Request" and op == "UPDATE":
            r = self.requests[props.pop("Id")]
            r.update(props)
            r["LastUpdateTime"] = self.ms()
            return {"entity_result_list": [{"entity": {"entity_type": "Request", "properties": {"Id": r["Id"]}},
                                            "completion_status": "OK"}], "meta": {"completion_status": "OK"}}
        raise Reply(400, {"error": "unsupported bulk"})


DESKS = {"jira": FakeJira, "zammad": FakeZammad, "smax": FakeSmax}
STATUS_FOR = {  # a remote status per local one, for each fake
    "jira": {"open": "Waiting for support", "in_progress": "In progress", "pending": "Waiting for customer",
             "resolved": "Resolved", "closed": "Canceled"},
    "zammad": {"open": "open", "pending": "pending reminder", "closed": "closed"},
    "smax": {"open": "RequestStatusReady", "in_progress": "RequestStatusInProgress",
             "pending": "RequestStatusPendingVendor", "resolved": "RequestStatusComplete"},
}


def backend_config(desk: FakeDesk, tmp_path: Any, **extra: Any) -> dict[str, Any]:
    """The [backend] table pointing the gateway at this fake."""
    secret = tmp_path / f"{desk.kind}-token"
    hook = tmp_path / f"{desk.kind}-webhook-secret"
    hook.write_text("s3cret-webhook-key\n")
    common = {"kind": desk.kind, "url": desk.url, "token_file": str(secret), "webhook_secret_file": str(hook),
              "retry_base_seconds": 30, "statuses": {v: k for k, v in STATUS_FOR[desk.kind].items()}}
    if desk.kind == "jira":
        secret.write_text("jira-token\n")
        common.update(user="gw@example.com", service_desk_id="4", request_types={"*": "10", "problem": "11"},
                      priorities={"high": "2", "critical": "1"})
    elif desk.kind == "zammad":
        secret.write_text("zammad-token\n")
        common.update(request_types={"*": "Users"}, priorities={"high": "3 high", "low": "1 low"})
    else:
        secret.write_text("smax-password\n")
        common.update(user="gateway", tenant_id=FakeSmax.TENANT, request_types={"*": "11001"},
                      priorities={"high": "HighPriority"})
    common.update(extra)
    return common

"""The HTTP API over real HTTP on loopback: `serve` in-process with its SMTP/LMTP and HTTP listeners on free
ports, SQLite and PostgreSQL (`db_url`), httpx as the client. Every endpoint, the 401/403/404/409/422
answers, idempotent create and upsert, pagination, request limits and the OpenAPI document."""

from __future__ import annotations

import contextlib
import json
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from test_smtp import Running, config_for, make_mail

from gateway.models import OutboxMail
from gateway.ops.tokens import create_token


@contextlib.contextmanager
def gateways(tmp_path: Path, db_url: str) -> Iterator[Callable[..., Gateway]]:
    """Start gateways (`serve` in-process, HTTP on a free port) on one store; all stopped at the end."""
    running: list[Running] = []

    def start(**kw: Any) -> Gateway:
        http = {"listen": "127.0.0.1:0", **kw.pop("http", {})}
        r = Running(config_for(tmp_path, db_url, http=http, **kw))
        running.append(r)
        return Gateway(r)

    try:
        yield start
    finally:
        for r in running:
            if r.thread.is_alive():
                r.stop()


@pytest.fixture
def gw(tmp_path, db_url):
    with gateways(tmp_path, db_url) as start:
        yield start


class Gateway:
    def __init__(self, running: Running) -> None:
        self.running = running
        self.app = running.service.app
        self.base = running.service.http_where
        assert self.base and self.base.startswith("http://127.0.0.1:")
        self.secrets = {scope: self._token(scope) for scope in ("read", "write", "admin")}

    def _token(self, scope: str) -> str:
        from gateway.ops.errors import Conflict

        for n in range(10):  # a second gateway on the same store makes its own
            try:
                return create_token(self.app, f"t-{scope}" + (f"-{n}" if n else ""), scope)[1]
            except Conflict:
                continue
        raise AssertionError("no token")

    def client(self, scope: str | None = "admin", **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.secrets[scope]}"} if scope else {}
        return httpx.Client(base_url=self.base, headers=headers, timeout=20, **kw)

    def smtp(self, raw: bytes, rcpt: str = "support@example.com") -> None:
        with smtplib.SMTP("127.0.0.1", self.running.port("smtp"), timeout=20) as s:
            s.sendmail("alice@customer.example", [rcpt], raw)


def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:ticket-gateway:problem:") and body["title"]
    return body


def all_pages(c: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(100):
        q = dict(params, **({"cursor": cursor} if cursor else {}))
        r = c.get(path, params=q)
        assert r.status_code == 200, r.text
        body = r.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if not cursor:
            assert "link" not in r.headers
            return items
        assert 'rel="next"' in r.headers["link"]
    raise AssertionError("pagination does not end")


# Tickets -------------------------------------------------------------------------------------------------------
def test_tickets_create_idempotent_list_paginate_get_patch(gw) -> None:
    g = gw()
    with g.client("write") as c:
        body = {"subject": "Deployment failed", "reporter": "ci@customer.example", "description": "job 7 red",
                "priority": "high", "tags": ["deploy", "ci"], "watchers": ["ops@customer.example"]}
        r = c.post("/api/v1/tickets", json=body, headers={"Idempotency-Key": "deploy-7"})
        assert r.status_code == 201, r.text
        first = r.json()
        assert r.headers["location"] == f"/api/v1/tickets/{first['number']}"
        assert first["priority"] == "high" and first["tags"] == ["deploy", "ci"]
        assert first["watchers"] == ["ops@customer.example"]
        # the caller named the watcher: the gateway mails it (an unvouched watcher would never hear of the ticket)
        assert [(w["email"], w["mailed"]) for w in all_pages(c, f"/api/v1/tickets/{first['number']}/watchers")
                ] == [("ops@customer.example", True)]
        # the retry: the same ticket, 200, never a second one
        again = c.post("/api/v1/tickets", json=body, headers={"Idempotency-Key": "deploy-7"})
        assert again.status_code == 200 and again.json()["number"] == first["number"]
        # the same key with another request is refused
        other = c.post("/api/v1/tickets", json={**body, "subject": "other"}, headers={"Idempotency-Key": "deploy-7"})
        assert problem(other, 422)["errors"][0]["field"] == "Idempotency-Key"
        # external_id: the caller's own id makes the create idempotent too
        e1 = c.post("/api/v1/tickets", json={"subject": "Host down", "reporter": "mon@customer.example",
                                             "external_id": "alert-42"})
        e2 = c.post("/api/v1/tickets", json={"subject": "Host down (again)", "reporter": "mon@customer.example",
                                             "external_id": "alert-42"})
        assert (e1.status_code, e2.status_code) == (201, 200)
        assert e1.json()["number"] == e2.json()["number"] and e2.json()["external_id"] == "alert-42"
        for i in range(5):
            assert c.post("/api/v1/tickets", json={"subject": f"t{i}", "reporter": "bob@customer.example"}
                          ).status_code == 201
        # pagination: pages of 2, each ticket once, newest first
        listed = all_pages(c, "/api/v1/tickets", limit=2)
        numbers = [t["number"] for t in listed]
        assert numbers == sorted(numbers, reverse=True) and len(numbers) == len(set(numbers)) == 7
        assert [t["number"] for t in all_pages(c, "/api/v1/tickets", tag="deploy")] == [first["number"]]
        assert [t["number"] for t in all_pages(c, "/api/v1/tickets", priority="high")] == [first["number"]]
        problem(c.get("/api/v1/tickets", params={"status": "nonsense"}), 422)
        problem(c.get("/api/v1/tickets", params={"limit": 500}), 422)
        problem(c.get("/api/v1/tickets", params={"stauts": "open"}), 422)  # a typo is not silently ignored
        problem(c.get("/api/v1/tickets", params={"cursor": "not-a-cursor"}), 422)

        got = c.get(f"/api/v1/tickets/{first['number']}")
        assert got.status_code == 200 and got.json()["subject"] == "Deployment failed"
        problem(c.get("/api/v1/tickets/9999"), 404)
        problem(c.get("/api/v1/tickets/abc"), 404)

        # PATCH: the rules of the CLI (assignee must be staff; a reminder implies pending)
        with g.client("admin") as admin:
            assert admin.post("/api/v1/users", json={"email": "sam@example.com", "role": "staff",
                                                     "name": "Sam"}).status_code == 201
        n = first["number"]
        r = c.patch(f"/api/v1/tickets/{n}", json={"status": "in_progress", "assignee": "sam@example.com",
                                                  "by": "sam@example.com"})
        assert r.status_code == 200, r.text
        assert r.json()["changes"] == {"status": ["open", "in_progress"], "assignee": [None, "sam@example.com"]}
        assert r.json()["ticket"]["assignee"] == "sam@example.com"
        problem(c.patch(f"/api/v1/tickets/{n}", json={"assignee": "ci@customer.example"}), 422)
        problem(c.patch(f"/api/v1/tickets/{n}", json={"status": "exploded"}), 422)
        problem(c.patch(f"/api/v1/tickets/{n}", json={"subject": "renamed"}), 422)
        problem(c.patch(f"/api/v1/tickets/{n}", json={}), 422)
        r = c.patch(f"/api/v1/tickets/{n}", json={"remind_at": "2030-01-02T09:00:00Z"})
        assert r.json()["changes"]["status"] == ["in_progress", "pending"]
        assert r.json()["sla"]["remind_at"] == "2030-01-02T09:00:00Z"
        r = c.patch(f"/api/v1/tickets/{n}", json={"status": "open", "tags": ["deploy"], "group": None})
        assert r.json()["sla"]["remind_at"] is None and r.json()["ticket"]["tags"] == ["deploy"]
        problem(c.patch("/api/v1/tickets/9999", json={"status": "open"}), 404)


def test_comments_public_internal_and_their_notifications(gw) -> None:
    g = gw()
    with g.client("write") as c:
        n = c.post("/api/v1/tickets", json={"subject": "VPN", "reporter": "carol@customer.example"}).json()["number"]
        pub = c.post(f"/api/v1/tickets/{n}/comments", json={"body": "Please restart the client."})
        assert pub.status_code == 201 and pub.json()["internal"] is False and pub.json()["by_staff"] is True
        note = c.post(f"/api/v1/tickets/{n}/comments", json={"body": "Probably the cert.", "internal": True})
        assert note.status_code == 201 and note.json()["internal"] is True
        problem(c.post(f"/api/v1/tickets/{n}/comments", json={"body": "x", "internal": "yes"}), 422)
        problem(c.post(f"/api/v1/tickets/{n}/comments", json={"text": "x"}), 422)
        problem(c.post(f"/api/v1/tickets/{n}/comments", json={"body": "x", "author": "nobody@nowhere.example"}), 422)
        problem(c.post("/api/v1/tickets/999/comments", json={"body": "x"}), 404)
        everything = all_pages(c, f"/api/v1/tickets/{n}/comments", limit=1)
        assert [x["body"] for x in everything] == ["Please restart the client.", "Probably the cert."]
        public = all_pages(c, f"/api/v1/tickets/{n}/comments", internal="false")
        assert [x["body"] for x in public] == ["Please restart the client."]
        outbox = all_pages(c, "/api/v1/outbox")
    # the public comment is mailed to the reporter like a staff reply; the internal note is not
    to_carol = [o["event"] for o in outbox if o["recipient"] == "carol@customer.example"]
    assert sorted(to_carol) == ["comment", "ticket_created"]


# Directory -----------------------------------------------------------------------------------------------------
def test_users_and_organisations(gw) -> None:
    g = gw()
    with g.client("admin") as c:
        r = c.post("/api/v1/organisations", json={"name": "Customer Ltd", "domains": ["customer.example"]})
        assert r.status_code == 201 and r.json() == {"name": "Customer Ltd", "domains": ["customer.example"],
                                                  "visibility": "reporter-only"}
        problem(c.post("/api/v1/organisations", json={"name": "Customer Ltd"}), 409)
        problem(c.post("/api/v1/organisations", json={"name": "Other", "domains": ["customer.example"]}), 409)
        problem(c.post("/api/v1/organisations", json={"name": "Bad", "domains": ["not a domain"]}), 422)
        r = c.patch("/api/v1/organisations/Customer Ltd", json={"domains": ["customer.example", "cust.example"]})
        assert r.json()["domains"] == ["cust.example", "customer.example"]
        assert c.get("/api/v1/organisations/Customer Ltd").json()["domains"] == ["cust.example", "customer.example"]
        problem(c.get("/api/v1/organisations/Nope"), 404)

        r = c.post("/api/v1/users", json={"email": "Dana@Customer.example", "name": "Dana"})
        assert r.status_code == 201
        assert r.json()["email"] == "dana@customer.example" and r.json()["organisation"] == "Customer Ltd"
        problem(c.post("/api/v1/users", json={"email": "dana@customer.example"}), 409)
        problem(c.post("/api/v1/users", json={"email": "not-an-address"}), 422)
        problem(c.post("/api/v1/users", json={"email": "x@y.example", "organisation": "Nope"}), 422)
        r = c.patch("/api/v1/users/dana@customer.example", json={"role": "staff", "organisation": None})
        assert r.json()["role"] == "staff" and r.json()["organisation"] is None
        problem(c.patch("/api/v1/users/ghost@customer.example", json={"name": "x"}), 404)
        for i in range(3):
            c.post("/api/v1/users", json={"email": f"u{i}@cust.example"})
        emails = [u["email"] for u in all_pages(c, "/api/v1/users", limit=2)]
        assert emails == sorted(emails) and len(emails) == 4
        assert [u["email"] for u in all_pages(c, "/api/v1/users", role="staff")] == ["dana@customer.example"]
        assert [o["name"] for o in all_pages(c, "/api/v1/organisations")] == ["Customer Ltd"]

        # a reporter stays (tickets keep their people); a contact nothing refers to goes
        c.post("/api/v1/tickets", json={"subject": "x", "reporter": "u0@cust.example"})
        problem(c.delete("/api/v1/users/u0@cust.example"), 409)
        assert c.delete("/api/v1/users/u1@cust.example").status_code == 204
        problem(c.get("/api/v1/users/u1@cust.example"), 404)
        problem(c.delete("/api/v1/organisations/Customer Ltd"), 409)  # u0 and u2 belong to it
        assert c.post("/api/v1/organisations", json={"name": "Empty"}).status_code == 201
        assert c.delete("/api/v1/organisations/Empty").status_code == 204


# SLA policies --------------------------------------------------------------------------------------------------
def test_sla_policy_put_is_an_upsert_that_says_whether_it_changed(gw) -> None:
    g = gw()
    gold = {"response_minutes": 30, "resolution_minutes": 240, "priorities": ["critical", "high"],
            "calendar": "Europe/Berlin mon-fri 09:00-17:00", "escalate_to": ["lead@example.com"]}
    with g.client("admin") as c:
        r = c.put("/api/v1/sla-policies/gold", json=gold)
        assert r.status_code == 201 and r.json()["created"] is True and r.json()["changed"] is True
        r = c.put("/api/v1/sla-policies/gold", json=gold)  # the Ansible task's second run
        assert r.status_code == 200 and r.json() == {**r.json(), "created": False, "changed": False}
        r = c.put("/api/v1/sla-policies/gold", json={**gold, "resolution_minutes": 480})
        assert r.status_code == 200 and r.json()["changed"] is True
        assert r.json()["policy"]["resolution_minutes"] == 480
        assert c.put("/api/v1/sla-policies/silver", json={"response_minutes": 60, "resolution_minutes": 960,
                                                         "position": 1}).status_code == 201
        assert [p["name"] for p in all_pages(c, "/api/v1/sla-policies", limit=1)] == ["silver", "gold"]
        assert c.get("/api/v1/sla-policies/gold").json()["calendar"]["tz"] == "Europe/Berlin"
        problem(c.put("/api/v1/sla-policies/bad", json={"response_minutes": 30}), 422)
        problem(c.put("/api/v1/sla-policies/bad", json={**gold, "calendar": "Mars/Olympus 25:00-26:00"}), 422)
        problem(c.put("/api/v1/sla-policies/bad", json={**gold, "priorities": ["urgent"]}), 422)
        assert c.delete("/api/v1/sla-policies/silver").status_code == 204
        problem(c.get("/api/v1/sla-policies/silver"), 404)
        problem(c.delete("/api/v1/sla-policies/silver"), 404)
    # the CLI sees what the API wrote (one store, one set of functions)
    from gateway.ops.sla import list_policies

    assert [p["name"] for p in list_policies(g.app).items] == ["gold"]


# Mail, outbox, tokens ------------------------------------------------------------------------------------------
def test_mail_trace_replay_outbox_retry_and_tokens(gw) -> None:
    g = gw()
    g.smtp(make_mail(subject="A real question"))
    g.smtp(b"this is not a mail at all\r\n")  # no header block, no sender: quarantined
    mails = g.running.wait_processed(2)
    good, bad = mails[0], mails[1]
    assert bad.outcome == "quarantined", [(m.id, m.outcome, m.reason) for m in mails]
    with g.client("admin") as c:
        listed = all_pages(c, "/api/v1/mail", limit=1)
        assert [m["id"] for m in listed] == [bad.id, good.id]
        assert [m["id"] for m in all_pages(c, "/api/v1/mail", status="quarantined")] == [bad.id]
        one = c.get(f"/api/v1/mail/{bad.id}").json()
        assert one["outcome"] == "quarantined" and any("outcome: quarantined" in t for t in one["trace"])
        problem(c.get("/api/v1/mail/99999"), 404)
        replay = c.post(f"/api/v1/mail/{bad.id}/replay")
        assert replay.status_code == 200 and replay.json()["mail_id"] == bad.id
        assert replay.json()["outcome"] == "quarantined"  # still not a mail: quarantined again, with a trace
        problem(c.post(f"/api/v1/mail/{good.id}/replay"), 409)  # only quarantined or rejected mail is replayed

        from gateway.outbound.sender import deliver_due

        deliver_due(g.app)
        rows = all_pages(c, "/api/v1/outbox")
        assert rows and rows[0]["event"] == "ticket_created" and rows[0]["status"] == "sent", rows
        problem(c.post(f"/api/v1/outbox/{rows[0]['id']}/retry"), 409)  # sent already
        with g.app.sessions() as s, s.begin():
            s.execute(update(OutboxMail).where(OutboxMail.id == rows[0]["id"])
                      .values(status="failed", last_error="550 no such user"))
        r = c.post(f"/api/v1/outbox/{rows[0]['id']}/retry")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        problem(c.post("/api/v1/outbox/99999/retry"), 404)
        assert [o["id"] for o in all_pages(c, "/api/v1/outbox", status="queued")] == [rows[0]["id"]]

        # tokens: admin manages them; the secret is shown once; a revoked token is refused at once
        created = c.post("/api/v1/tokens", json={"name": "ansible", "scope": "write"})
        assert created.status_code == 201 and created.json()["secret"].startswith("tgw_")
        secret = created.json()["secret"]
        problem(c.post("/api/v1/tokens", json={"name": "ansible"}), 409)
        names = [t["name"] for t in all_pages(c, "/api/v1/tokens")]
        assert names == ["ansible", "t-admin", "t-read", "t-write"]
        assert secret not in json.dumps(all_pages(c, "/api/v1/tokens"))
        with httpx.Client(base_url=g.base, headers={"Authorization": f"Bearer {secret}"}) as ansible:
            assert ansible.get("/api/v1/tickets").status_code == 200
            assert c.delete("/api/v1/tokens/ansible").json()["active"] is False
            problem(ansible.get("/api/v1/tickets"), 401)


# Authentication and authorisation ------------------------------------------------------------------------------
def test_tokens_scopes_and_brute_force(gw, caplog) -> None:
    g = gw(http={"auth_failures_per_minute": 5})
    with g.client(None) as anon:
        r = anon.get("/api/v1/tickets")
        problem(r, 401)
        assert r.headers["www-authenticate"].startswith("Bearer")
        problem(anon.get("/api/v1/tickets", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
        assert anon.get("/healthz").status_code == 200  # no token
        assert anon.get("/metrics").status_code == 200  # no token by default
        assert anon.get("/api/v1/openapi.json").status_code == 200
    with g.client("read") as read:
        assert read.get("/api/v1/tickets").status_code == 200
        # read cannot write, anywhere
        problem(read.post("/api/v1/tickets", json={"subject": "x", "reporter": "a@b.example"}), 403)
        problem(read.patch("/api/v1/tickets/1", json={"status": "closed"}), 403)
        problem(read.put("/api/v1/sla-policies/p", json={"response_minutes": 1, "resolution_minutes": 2}), 403)
        problem(read.post("/api/v1/tokens", json={"name": "mine", "scope": "admin"}), 403)
    with g.client("write") as write:
        assert write.post("/api/v1/tickets", json={"subject": "x", "reporter": "a@b.example"}).status_code == 201
        problem(write.put("/api/v1/sla-policies/p", json={"response_minutes": 1, "resolution_minutes": 2}), 403)
        problem(write.post("/api/v1/mail/1/replay"), 403)
        problem(write.get("/api/v1/tokens"), 403)
    # guessing: after 5 failures this address gets 429, even with a right token, until the minute is over
    guess = "tgw_" + "A" * 43
    with httpx.Client(base_url=g.base, timeout=10) as attacker:
        codes = [attacker.get("/api/v1/tickets", headers={"Authorization": f"Bearer {guess}"}).status_code
                 for _ in range(8)]
        assert codes == [401] * 5 + [429] * 3
        r = attacker.get("/api/v1/tickets", headers={"Authorization": f"Bearer {g.secrets['admin']}"})
        problem(r, 429)
        assert 0 < int(r.headers["retry-after"]) <= 61
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "refused a token" in logged
    for secret in list(g.secrets.values()) + [guess]:
        assert secret not in logged  # no token in the logs


# Limits --------------------------------------------------------------------------------------------------------
def test_request_limits(gw) -> None:
    g = gw(http={"max_body_bytes": 4096, "max_upload_bytes": 64 * 1024})
    with g.client("write") as c:
        n = c.post("/api/v1/tickets", json={"subject": "limits", "reporter": "a@b.example"}).json()["number"]
        problem(c.post("/api/v1/tickets", json={"subject": "x" * 5000, "reporter": "a@b.example"}), 413)
        # a body without Content-Length (chunked) is counted as it arrives
        chunks = iter([b'{"subject": "', b"y" * 3000, b"y" * 3000, b'", "reporter": "a@b.example"}'])
        problem(c.post("/api/v1/tickets", content=chunks, headers={"content-type": "application/json"}), 413)
        problem(c.post(f"/api/v1/tickets/{n}/comments", data={"body": "big"},
                       files={"f": ("big.bin", b"\0" * (70 * 1024), "application/octet-stream")}), 413)
        problem(c.post("/api/v1/tickets", content=b"subject=x", headers={"content-type": "text/plain"}), 415)
        problem(c.post("/api/v1/tickets", content=b"{not json", headers={"content-type": "application/json"}), 400)
        problem(c.post("/api/v1/tickets", content=b"[" * 4000, headers={"content-type": "application/json"}), 400)
        problem(c.post("/api/v1/tickets", json={"subject": "x", "reporter": "a@b.example", "tags": ["t"] * 51}), 422)
        problem(c.post("/api/v1/tickets", json=["not", "an", "object"]), 422)
        problem(c.delete("/api/v1/tickets/1"), 405)
        problem(c.get("/api/v1/nothing-here"), 404)
        # still serving after all that
        assert c.get(f"/api/v1/tickets/{n}").status_code == 200


# The OpenAPI document ------------------------------------------------------------------------------------------
def test_openapi_document_is_valid_and_covers_every_route(gw) -> None:
    from openapi_spec_validator import validate

    g = gw()
    with g.client(None) as c:
        doc = c.get("/api/v1/openapi.json").json()
    validate(doc)  # raises on an invalid OpenAPI 3.1 document
    assert doc["openapi"] == "3.1.0"
    api = g.running.service.http_api
    for op in api.ops:
        item = doc["paths"][api.full_path(op)][op.method.lower()]
        assert item["operationId"] == op.operation_id
        if op.scope:
            assert item["security"] == [{"bearer": []}] and "401" in item["responses"]
    routes = {(m, p) for p, methods in doc["paths"].items() for m in methods}
    for expected in [("post", "/api/v1/tickets"), ("patch", "/api/v1/tickets/{number}"),
                     ("post", "/api/v1/tickets/{number}/comments"),
                     ("get", "/api/v1/tickets/{number}/attachments/{attachment_id}"),
                     ("put", "/api/v1/sla-policies/{name}"), ("delete", "/api/v1/users/{email}"),
                     ("post", "/api/v1/mail/{id}/replay"), ("post", "/api/v1/outbox/{id}/retry"),
                     ("get", "/healthz"), ("get", "/metrics")]:
        assert expected in routes
    comment = doc["paths"]["/api/v1/tickets/{number}/comments"]["post"]["requestBody"]["content"]
    assert set(comment) == {"application/json", "multipart/form-data"}
    # every list is paginated
    for path, methods in doc["paths"].items():
        get = methods.get("get")
        schema = (get or {}).get("responses", {}).get("200", {}).get("content", {}).get("application/json", {}) \
            .get("schema", {})
        if schema.get("$ref", "").endswith("Page"):
            assert {p["name"] for p in get["parameters"]} >= {"limit", "cursor"}, path

"""`ticket-gateway backend check|flush|show` as a subprocess against the fake desks; hostile webhooks."""

from __future__ import annotations

import json
from typing import Any

from backends.conftest import first_mail
from conftest import run_cli, write_config
from fakedesks import backend_config


def toml(table: dict[str, Any], name: str = "backend") -> str:
    def v(x: Any) -> str:
        return json.dumps(x) if not isinstance(x, bool) else ("true" if x else "false")

    out = [f"[{name}]"] + [f"{k} = {v(x)}" for k, x in table.items() if not isinstance(x, dict)]
    for k, x in table.items():
        if isinstance(x, dict):
            out.append(f"[{name}.{k}]")
            out += [f"{json.dumps(a)} = {v(b)}" for a, b in x.items()]
    return "\n".join(out) + "\n"


def test_backend_check_reports_what_is_missing(desk, tmp_path, db_url):
    b = backend_config(desk, tmp_path)
    bad = {"jira": ("request_types", {"*": "10", "problem": "11", "change_request": "99"}),
           "zammad": ("request_types", {"*": "Users", "problem": "3rd Level"}),
           "smax": ("request_types", {"*": "11001", "problem": "99999"})}[desk.kind]
    b[bad[0]] = bad[1]
    b["priorities"] = {**b["priorities"], "low": "no-such-priority"} if desk.kind != "smax" else b["priorities"]
    cfg = write_config(tmp_path, db_url, "\n" + toml(b))
    r = run_cli("backend", "check", config=cfg)
    out = r.stdout.decode()
    assert r.returncode == 78, out + r.stderr.decode()
    assert out.splitlines()[0] == f"backend {desk.kind}: {desk.kind} at {desk.url}"
    assert "ok      credentials: signed in as" in out
    missing = [li for li in out.splitlines() if li.startswith("MISSING")]
    if desk.kind == "jira":
        assert any("request type change_request -> 99" in li for li in missing)
        assert any("request type 11: Labels field" in li for li in missing)  # our reference cannot go there
        assert any("priority low -> no-such-priority" in li for li in missing)
        assert "ok      status 'Resolved' -> resolved" in out
    elif desk.kind == "zammad":
        assert any("group problem -> '3rd Level'" in li for li in missing)
        assert any("priority low -> 'no-such-priority'" in li for li in missing)
        assert "ok      state 'pending reminder' -> pending" in out
    else:
        assert any("category problem -> 99999" in li for li in missing)
    assert out.strip().endswith("missing")
    assert "token" not in r.stderr.decode().lower() or "token_file" in r.stderr.decode()
    assert "jira-token" not in out and "zammad-token" not in out and "smax-password" not in out


def test_backend_check_wrong_credentials(desk, tmp_path, db_url):
    b = backend_config(desk, tmp_path)
    (tmp_path / "wrong").write_text("not-the-token\n")
    b["token_file"] = str(tmp_path / "wrong")
    r = run_cli("backend", "check", config=write_config(tmp_path, db_url, "\n" + toml(b)))
    assert r.returncode == 75
    assert "MISSING credentials or desk" in r.stdout.decode()
    assert "not-the-token" not in r.stdout.decode() + r.stderr.decode()


def test_flush_and_show_from_the_cli(desk, tmp_path, db_url):
    cfg = write_config(tmp_path, db_url, "\n" + toml(backend_config(desk, tmp_path)))
    assert run_cli("ingest", input=first_mail(), config=cfg).returncode == 0
    r = run_cli("backend", "flush", config=cfg)
    if desk.kind == "smax":  # the new person becomes visible after a moment: the create waits (exit 75)
        assert r.returncode == 75
        assert run_cli("backend", "retry", "1", config=cfg).returncode == 0  # due now, not in 15 s
        r = run_cli("backend", "flush", config=cfg)
    assert r.returncode == 0, r.stdout.decode() + r.stderr.decode()
    show = run_cli("backend", "show", "1", config=cfg).stdout.decode()
    assert show.startswith(f"#1 -> {desk.kind} {desk.keys()[0]}")


def test_webhook_hostile_input(gateway):
    from gateway.backends import handle_webhook

    gw = gateway()
    name = gw.desk.kind
    body = b"x" * (1024 * 1024 + 1)
    assert handle_webhook(gw.app, name, {"X-Hub-Signature": gw.desk.sign(body, b"s3cret-webhook-key")},
                          body).status == 413
    assert handle_webhook(gw.app, "other", {}, b"{}").status == 404
    # signed, but naming a request the gateway does not know (or none): only a poll is asked for
    body = json.dumps({"issue": {"key": "XX-1"}, "ticket": {"id": 999}, "Id": "999"}).encode()
    r = handle_webhook(gw.app, name, {"X-Hub-Signature": gw.desk.sign(body, b"s3cret-webhook-key")}, body)
    assert r.status == 202 and r.body["poll"] is True
    body = b"not json"
    r = handle_webhook(gw.app, name, {"x-hub-signature": gw.desk.sign(body, b"s3cret-webhook-key")}, body)
    assert r.status == 202


def test_webhook_refused_without_a_secret(gateway):
    from gateway.backends import handle_webhook

    gw = gateway(webhook_secret_file="")
    body = b"{}"
    assert handle_webhook(gw.app, gw.desk.kind, {"X-Hub-Signature": gw.desk.sign(body, b"")}, body).status == 403

"""The CLI as a staff tool, as a subprocess on real mail: set, link/unlink, log, merge (then mail to the merged
ticket lands on the target), watch/unwatch, comment, list filters and order, show; users set/block, orgs
add/set/remove; the refusals and their exit statuses."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli, write_config
from mails import make_mail, message_id_of


@pytest.fixture
def cfg(tmp_path, db_url):
    return write_config(tmp_path, db_url)


@pytest.fixture
def lite(tmp_path, sqlite_url):
    """SQLite only: what these commands do in the database is the shared operations', which the HTTP tests run
    on both databases; a CLI call costs a second."""
    return write_config(tmp_path, sqlite_url)


def ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def j(proc):
    return json.loads(ok(proc))


def test_links_refused_close_time_and_merge_then_mail_lands_on_target(cfg):
    first = make_mail(subject="VPN down", body="The VPN is down.\n")
    ok(run_cli("ingest", config=cfg, input=first))
    second = make_mail(sender="Bob <bob@other.example>", subject="VPN down too", body="Same here.\n")
    ok(run_cli("ingest", config=cfg, input=second))
    ok(run_cli("ingest", config=cfg, input=make_mail(sender="carl@third.example", subject="Root cause")))
    ok(run_cli("users", "add", "sam@example.com", "--staff", "--name", "Sam", config=cfg))

    # #1 is blocked by #3: closing #1 is refused with the reason, while #3 is open
    assert "#1 blocked-by #3" in ok(run_cli("tickets", "link", "1", "3", "--kind", "Blocked_By", config=cfg))
    refused = run_cli("tickets", "set", "1", "--status", "closed", config=cfg)
    assert refused.returncode == 64 and b"blocked by #3 (open)" in refused.stderr
    bad = run_cli("tickets", "link", "1", "2", "--kind", "parent-of", config=cfg)
    assert bad.returncode == 64 and b"--kind: one of relates" in bad.stderr
    assert run_cli("tickets", "link", "1", "99", "--kind", "relates", config=cfg).returncode == 66
    assert run_cli("tickets", "log", "99", "1h", config=cfg).returncode == 66
    assert run_cli("tickets", "log", "1", "soon", config=cfg).returncode == 64
    ok(run_cli("tickets", "link", "3", "2", "--kind", "causes", config=cfg))  # #2 caused-by #3

    out = ok(run_cli("tickets", "log", "1", "1h30m", "--note", "phone call", "--as", "sam@example.com", config=cfg))
    assert "1h30m logged (phone call); total 1h30m" in out
    out = ok(run_cli("tickets", "log", "2", "20m", config=cfg))
    assert "total 20m" in out
    assert "cc@watch.example watches it now" in ok(run_cli("tickets", "watch", "2", "cc@watch.example",
                                                           config=cfg))

    # merge #2 into #1: comments, time, watchers (and #2's reporter) move; #2 closes and points to #1
    out = ok(run_cli("tickets", "merge", "2", "--into", "1", config=cfg))
    assert "#2 merged into #1" in out and "1 time entries" in out
    assert run_cli("tickets", "merge", "2", "--into", "3", config=cfg).returncode == 64  # merged already
    two = j(run_cli("tickets", "show", "2", "--json", config=cfg))
    assert two["status"] == "closed" and two["merged_into"] == 1
    one = j(run_cli("tickets", "show", "1", "--json", config=cfg))
    assert one["time_minutes"] == 110
    assert set(one["watchers"]) == {"bob@other.example", "cc@watch.example"}
    assert {"kind": "blocked-by", "number": 3} in [{k: x[k] for k in ("kind", "number")} for x in one["links"]]

    # Bob answers the acknowledgement of #2 (its Message-ID, its subject tag): the mail lands on #1
    reply = make_mail(sender="Bob <bob@other.example>", subject="Re: [#2] VPN down too",
                      in_reply_to=message_id_of(second), body="Still down here.\n")
    assert "comment #1" in ok(run_cli("ingest", config=cfg, input=reply))
    tagged = make_mail(sender="Bob <bob@other.example>", subject="[#2] one more thing", body="And DNS.\n")
    assert "comment #1" in ok(run_cli("ingest", config=cfg, input=tagged))
    one = j(run_cli("tickets", "show", "1", "--json", config=cfg))
    assert [c["body"] for c in one["comments"]][-2:] == ["Still down here.", "And DNS."]
    text = ok(run_cli("tickets", "show", "1", config=cfg))
    assert "time logged 1h50m" in text and "linked: blocked-by #3 (open: Root cause)" in text

    # once #3 is resolved, #1 may close; unlink removes the link
    ok(run_cli("tickets", "set", "3", "--status", "resolved", config=cfg))
    ok(run_cli("tickets", "set", "1", "--status", "closed", config=cfg))
    assert "1 link(s) to #3 removed" in ok(run_cli("tickets", "unlink", "1", "3", config=cfg))
    assert run_cli("tickets", "unlink", "1", "3", config=cfg).returncode == 66


def test_set_fields_list_filters_and_order_comment_watch(lite):
    cfg = lite
    ok(run_cli("orgs", "add", "Customer Ltd", "--domain", "customer.example", "--visibility", "organisation",
               config=cfg))
    for i in range(4):
        ok(run_cli("ingest", config=cfg, input=make_mail(subject=f"Problem {i + 1}", body=f"Body {i + 1}\n")))
    ok(run_cli("users", "add", "sam@example.com", "--staff", config=cfg))
    out = j(run_cli("tickets", "set", "2", "--tag", "vpn", "--tag", "urgent", "--organisation", "Customer Ltd",
                    "--group", "network", "--type", "Service Request", "--assignee", "sam@example.com", "--json",
                    config=cfg))
    assert out["changes"]["tags"] == [[], ["vpn", "urgent"]] and out["changes"]["type"][1] == "service_request"
    assert j(run_cli("tickets", "set", "2", "--untag", "urgent", "--json", config=cfg))["changes"]["tags"] == [
        ["vpn", "urgent"], ["vpn"]]
    assert run_cli("tickets", "set", "2", "--organisation", "Nope", config=cfg).returncode == 66
    ok(run_cli("tickets", "set", "3", "--pending", "2020-01-01", config=cfg))  # a reminder that is due
    # staff answered #4: the customer does not wait on it any more
    ok(run_cli("tickets", "comment", "4", "--body", "We are on it.", "--as", "sam@example.com", config=cfg))
    ok(run_cli("tickets", "comment", "1", "--body", "Checked the logs.", "--internal", config=cfg))
    listed = j(run_cli("tickets", "list", "--json", config=cfg))
    # the due reminder, then where the customer spoke last (newest first), then the rest
    assert [t["number"] for t in listed] == [3, 2, 1, 4]
    assert [t["number"] for t in j(run_cli("tickets", "list", "--tag", "vpn", "--group", "network",
                                           "--organisation", "Customer Ltd", "--json", config=cfg))] == [2]
    assert [t["number"] for t in j(run_cli("tickets", "list", "--text", "body 4", "--json", config=cfg))] == [4]
    assert [t["number"] for t in j(run_cli("tickets", "list", "--sla", "none", "--status", "open", "--json",
                                           config=cfg))] == [2, 1, 4]
    assert run_cli("tickets", "list", "--sla", "late", config=cfg).returncode == 64
    show = ok(run_cli("tickets", "show", "2", config=cfg))
    assert "tags vpn" in show and "SLA: none" in show and "organisation Customer Ltd" in show
    ok(run_cli("tickets", "watch", "2", "dora@example.net", config=cfg))
    assert "no longer watches" in ok(run_cli("tickets", "unwatch", "2", "dora@example.net", config=cfg))
    assert run_cli("tickets", "unwatch", "2", "dora@example.net", config=cfg).returncode == 66
    notes = j(run_cli("tickets", "show", "1", "--json", config=cfg))["comments"]
    assert [(c["body"], c["internal"]) for c in notes] == [("Checked the logs.", True)]


def test_users_set_block_and_orgs(lite):
    cfg = lite
    ok(run_cli("orgs", "add", "Acme", "--domain", "acme.example", config=cfg))
    out = ok(run_cli("orgs", "set", "Acme", "--visibility", "organisation", "--domain", "acme.test", config=cfg))
    assert "Acme: acme.test; visibility organisation" in out
    assert run_cli("orgs", "set", "Acme", "--visibility", "everyone", config=cfg).returncode == 64
    assert run_cli("orgs", "set", "Nope", "--visibility", "organisation", config=cfg).returncode == 66
    ok(run_cli("users", "add", "dana@acme.test", config=cfg))
    assert "dana@acme.test: staff, Acme, Dana D" in ok(run_cli("users", "set", "dana@acme.test", "--staff",
                                                                 "--name", "Dana D", config=cfg))
    assert "dana@acme.test: customer" in ok(run_cli("users", "set", "dana@acme.test", "--no-staff",
                                                      "--organisation", "none", config=cfg))
    assert run_cli("users", "set", "ghost@acme.test", "--staff", config=cfg).returncode == 66
    assert run_cli("orgs", "remove", "Acme", config=cfg).returncode == 0  # Dana left it: nobody belongs to it
    assert run_cli("orgs", "remove", "Acme", config=cfg).returncode == 66

    # a blocked sender's mail is quarantined with the reason; unblocked, a replay threads it
    ok(run_cli("users", "block", "spam@bad.example", "--reason", "sends adverts", config=cfg))
    ok(run_cli("ingest", config=cfg, input=make_mail(sender="spam@bad.example", subject="Buy now")))
    q = j(run_cli("mail", "list", "--status", "quarantined", "--json", config=cfg))
    assert len(q) == 1 and q[0]["reason"] == "blocked sender spam@bad.example: sends adverts"
    assert j(run_cli("tickets", "list", "--json", config=cfg)) == []
    ok(run_cli("users", "unblock", "spam@bad.example", config=cfg))
    assert "ticket" in ok(run_cli("mail", "replay", str(q[0]["id"]), config=cfg))
    ok(run_cli("users", "remove", "dana@acme.test", config=cfg))
    assert run_cli("users", "remove", "dana@acme.test", config=cfg).returncode == 66

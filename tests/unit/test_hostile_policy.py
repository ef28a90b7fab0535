"""Unit tests for the pure guards of issue 12: fixed inputs and clocks only (no sleeping, no now(), no DNS)."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.auth.headers import from_domain, header_fields, trusted_results
from gateway.auth.policy import AuthResult, DmarcRecord, Method, aligned, evaluate, org_domain
from gateway.guard import connlimits, diskspace, flood, relay

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


# flood ------------------------------------------------------------------------------------------------------
def test_flood_window_allowed_and_exemptions():
    p = flood.FloodPolicy.of(50, ["Monitor@Example.com", "@trusted.example", "partner.example"])
    assert flood.window(T0) == (T0 - timedelta(hours=1), T0)
    with pytest.raises(ValueError):
        flood.window(T0.replace(tzinfo=None))
    assert flood.allowed(p, 49) and not flood.allowed(p, 50)
    assert flood.exemption(p, "x@evil.example", is_staff=True) == "staff"
    assert flood.exemption(p, "monitor@example.com", is_staff=False) is not None
    assert flood.exemption(p, "a@trusted.example", is_staff=False) is not None
    assert flood.exemption(p, "a@eu.partner.example", is_staff=False) is not None  # a subdomain
    assert flood.exemption(p, "a@notpartner.example", is_staff=False) is None
    assert flood.exemption(p, "other@example.com", is_staff=False) is None


# relay ------------------------------------------------------------------------------------------------------
def test_plan_cc_bounds_and_exclusions():
    cc = [("", "a@x.example"), ("", "A@X.example"), ("", "support@example.com"), ("", "me@x.example"),
          ("", "bad"), ("", "w@x.example")] + [("", f"p{i}@x.example") for i in range(20)]
    plan = relay.plan_cc(cc, exclude=["me@x.example"], is_gateway=lambda a: a.startswith("support@"), limit=10,
                         already=["w@x.example"])
    assert [a for _, a in plan.take] == ["a@x.example"] + [f"p{i}@x.example" for i in range(9)]
    assert plan.over == [f"p{i}@x.example" for i in range(9, 20)]
    assert plan.skipped == 4  # duplicate, gateway, sender, not an address
    assert relay.plan_cc(cc, exclude=[], is_gateway=lambda a: False, limit=0).take == []


def test_vouch():
    assert relay.vouch("bob@example.com", staff=True, authenticated=False) == "added by staff bob@example.com"
    assert relay.vouch("a@x.example", staff=False, authenticated=True) == "Cc'd by authenticated a@x.example"
    assert relay.vouch("a@x.example", staff=False, authenticated=False) is None


# connections ------------------------------------------------------------------------------------------------
def test_connlimits():
    lim = connlimits.ConnLimits(100, 20, 0.8, 300, 10, (ipaddress.ip_network("10.0.0.0/8"),))
    assert connlimits.refuse(lim, "192.0.2.1", 19) is None
    assert connlimits.refuse(lim, "192.0.2.1", 20) == connlimits.TOO_MANY_FROM_YOU
    assert connlimits.refuse(lim, "10.1.2.3", 500) is None      # an exception
    assert connlimits.refuse(lim, None, 500) is None            # a Unix-socket client
    assert not connlimits.stressed(lim, 79) and connlimits.stressed(lim, 80)
    assert connlimits.idle_timeout(lim, 79) == 300 and connlimits.idle_timeout(lim, 80) == 10
    assert connlimits.client_key(("127.0.0.2", 4242)) == "127.0.0.2"
    assert connlimits.client_key(("fe80::1%eth0", 1, 0, 2)) == "fe80::1"
    assert connlimits.client_key("") is None
    small = connlimits.ConnLimits(10, 10, 0.5, 300, 1)
    assert not connlimits.stressed(small, 4) and connlimits.stressed(small, 5)


# disk -------------------------------------------------------------------------------------------------------
def test_disk_guard_with_a_fake_probe(tmp_path):
    free = {"n": 10}
    g = diskspace.DiskGuard(tmp_path, diskspace.needed(100, 1.5), probe=lambda p: free["n"])
    assert g.need == 150 and g.low()
    free["n"] = 150
    assert not g.low()
    assert not diskspace.DiskGuard(tmp_path, 0, probe=lambda p: 0).low()  # factor 0: never
    assert diskspace.free_bytes(Path(tmp_path) / "not" / "there") > 0      # the parent's file system


# authentication policy --------------------------------------------------------------------------------------
def ev(spf=None, dkim=(), fd="corp.example", **kw):
    return evaluate(AuthResult(from_domain=fd), spf, list(dkim), **kw)


REJECT = DmarcRecord("corp.example", "reject")


@pytest.mark.parametrize("spf,dkim,kw,verdict,dmarc", [
    (Method("pass", "corp.example"), [], {"record": REJECT, "record_known": True}, "pass", "pass"),
    (Method("pass", "bounce.corp.example"), [], {"record": REJECT, "record_known": True}, "pass", "pass"),
    (Method("pass", "bounce.corp.example"), [], {"record": DmarcRecord("corp.example", "reject", aspf="s"),
                                                 "record_known": True}, "fail", "fail"),
    (Method("fail", "corp.example"), [Method("pass", "corp.example")], {"record": REJECT, "record_known": True},
     "pass", "pass"),
    (Method("pass", "evil.example"), [Method("pass", "evil.example")], {"record": REJECT, "record_known": True},
     "fail", "fail"),
    (None, [], {"record": DmarcRecord("corp.example", "none"), "record_known": True}, "fail", "fail"),
    (Method("fail", "corp.example"), [], {"record": None, "record_known": True}, "fail", "none"),
    (Method("softfail", "corp.example"), [], {"record": None, "record_known": True}, "none", "none"),
    (None, [Method("fail", "corp.example")], {"record": None, "record_known": True}, "fail", "none"),
    (Method("none", "corp.example"), [], {"record": None, "record_known": True}, "none", "none"),
    (Method("temperror", "corp.example"), [Method("temperror", "corp.example")], {}, "none", "none"),
    (None, [], {"dmarc": "fail"}, "fail", "fail"),
    (None, [], {"dmarc": "pass"}, "pass", "pass"),
    (Method("pass", "corp.example"), [], {"dmarc": "temperror"}, "pass", "temperror"),
])
def test_verdicts(spf, dkim, kw, verdict, dmarc):
    r = ev(spf, dkim, **kw)
    assert (r.verdict, r.dmarc) == (verdict, dmarc), r


def test_no_from_domain_is_unverified():
    r = ev(Method("pass", "corp.example"), fd=None)
    assert r.verdict == "none" and "no single From domain" in r.notes[0]


def test_org_domain_and_alignment():
    assert org_domain("a.b.corp.example") == "corp.example"
    assert org_domain("mail.example.co.uk") == "example.co.uk"
    assert aligned("corp.example", "mx.corp.example") and not aligned("corp.example", "mx.corp.example", "s")
    assert not aligned("corp.example", "corp.example.evil.example")
    assert not aligned("corp.example", None)


def test_result_round_trip_and_summary():
    r = ev(Method("fail", "corp.example"), [], record=REJECT, record_known=True)
    again = AuthResult.from_dict(r.as_dict())
    assert again == r
    assert again.summary().startswith("fail by none: dmarc=fail (p=reject), spf=fail (corp.example)")


# Authentication-Results and From --------------------------------------------------------------------------
AR_OK = b"Authentication-Results: mx.example.com; dmarc=pass header.from=corp.example\r\n"
RECEIVED = b"Received: from a by mx.example.com; Mon, 2 Nov 2026 09:00:00 +0000\r\n"
BODY = b"From: v@corp.example\r\nSubject: x\r\n\r\nhi\r\n"


def tr(raw: bytes, relay_trusted: bool = True):
    return trusted_results(header_fields(raw), ["MX.example.com"], relay_trusted=relay_trusted)


def test_trusted_results_position_id_and_relay():
    ok = tr(AR_OK + RECEIVED + BODY)
    assert ok.found and ok.dmarc == "pass" and ok.ids == ["mx.example.com"]
    below = tr(RECEIVED + AR_OK + BODY)
    assert not below.found and "below the topmost Received" in below.notes[0]
    none_below = tr(AR_OK + BODY)
    assert not none_below.found and "no Received field below it" in none_below.notes[0]
    other = tr(AR_OK.replace(b"mx.example.com", b"mx.evil.example") + RECEIVED + BODY)
    assert not other.found and "not a trusted authserv-id" in other.notes[0]
    stranger = tr(AR_OK + RECEIVED + BODY, relay_trusted=False)
    assert not stranger.found and "trusted_relays" in stranger.notes[0]
    broken = tr(b"Authentication-Results: ;;;\r\n" + RECEIVED + BODY)
    assert not broken.found and broken.notes
    many = tr(AR_OK.replace(b"mx.example.com", b"x.example") * 30 + RECEIVED + BODY)
    assert len(many.notes) == 21  # 20 read, then one note for the rest


def test_trusted_results_methods():
    raw = (b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=b@bounce.corp.example; "
           b"dkim=pass header.d=corp.example; dkim=fail header.d=other.example\r\n" + RECEIVED + BODY)
    t = tr(raw)
    assert t.dmarc is None and t.spf == Method("pass", "bounce.corp.example")
    assert t.dkim == [Method("pass", "corp.example"), Method("fail", "other.example")]


@pytest.mark.parametrize("header,domain", [
    (b"From: Victim <victim@corp.example>\r\n", "corp.example"),
    (b"From: victim@Corp.Example.\r\n", "corp.example"),
    (b"From: a@x.example, b@y.example\r\n", None),
    (b"From: a@x.example\r\nFrom: b@y.example\r\n", None),
    (b"From: \"victim@corp.example\" <a@evil.example>\r\n", "evil.example"),
    (b"From: undisclosed\r\n", None),
])
def test_from_domain(header, domain):
    assert from_domain(header_fields(header + b"Subject: x\r\n\r\nbody\r\n")) == domain

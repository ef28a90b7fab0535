"""Sender authentication (issue 12, point 2) end to end: a real DNS server on loopback (tests/dnsserver.py)
with SPF, DMARC and DKIM key records, real DKIM signatures made with dkimpy, SMTP/LMTP clients connecting from
different loopback addresses through the real listeners, and `ingest` as a subprocess."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import dkim
import pytest
from conftest import run_cli, write_config
from dnsserver import DnsServer
from mails import make_mail, message_id_of
from servehelp import Running, config_for, send
from sqlalchemy import select

from gateway.models import Contact, InboundMail, OutboxMail

VICTIM = "Victor Victim <victim@corp.example>"
ATTACKER = "attacker@evil.example"
SPF_OK = "127.0.0.2"     # listed in corp.example's and nodmarc.example's SPF records
ELSEWHERE = "127.0.0.3"  # listed nowhere


@pytest.fixture(scope="module")
def dkim_key(tmp_path_factory) -> tuple[bytes, str]:
    """(PEM private key, the DNS record's p= value): a real 2048-bit RSA key."""
    d = tmp_path_factory.mktemp("dkim")
    subprocess.run(["openssl", "genrsa", "-traditional", "-out", str(d / "k.pem"), "2048"], check=True,
                   capture_output=True)
    der = subprocess.run(["openssl", "rsa", "-in", str(d / "k.pem"), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    return (d / "k.pem").read_bytes(), base64.b64encode(der).decode()


@pytest.fixture(scope="module")
def zone(dkim_key) -> DnsServer:
    z = DnsServer().start()
    z.txt("corp.example", f"v=spf1 ip4:{SPF_OK} -all")
    z.txt("_dmarc.corp.example", "v=DMARC1; p=reject; adkim=r; aspf=r")
    z.txt("sel._domainkey.corp.example", f"v=DKIM1; k=rsa; p={dkim_key[1]}")
    z.txt("nodmarc.example", f"v=spf1 ip4:{SPF_OK} -all")          # SPF, but no DMARC record
    z.txt("sel._domainkey.nodmarc.example", f"v=DKIM1; k=rsa; p={dkim_key[1]}")
    # plain.example publishes nothing at all
    yield z
    z.stop()


def signed(raw: bytes, key: bytes, domain: str = "corp.example") -> bytes:
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    sig = dkim.sign(raw, b"sel", domain.encode(), key, include_headers=[b"from", b"to", b"subject", b"message-id"])
    return sig + raw


@pytest.fixture
def gateway(tmp_path, db_url, zone):
    running: list[Running] = []

    def start(**sections):
        auth = {"verify": True, "dns_servers": [zone.address], **sections.pop("authentication", {})}
        r = Running(config_for(tmp_path, db_url, authentication=auth, **sections))
        running.append(r)
        return r

    yield start
    for r in running:
        r.stop()


def auth_of(m: InboundMail) -> dict:
    assert m.auth is not None, m.trace
    return m.auth


def test_dkim_spf_dmarc_verdicts_through_smtp(gateway, dkim_key):
    key = dkim_key[0]
    r = gateway()
    port = r.port("smtp")
    cases = [  # (raw, MAIL FROM, client address, verdict, outcome)
        (signed(make_mail(sender=VICTIM, subject="signed"), key), "victim@corp.example", ELSEWHERE, "pass", "ticket"),
        (make_mail(sender=VICTIM, subject="spf only"), "victim@corp.example", SPF_OK, "pass", "ticket"),
        (make_mail(sender=VICTIM, subject="forged"), "victim@corp.example", ELSEWHERE, "fail", "quarantined"),
        (signed(make_mail(sender=VICTIM, subject="tampered"), key).replace(b"on fire", b"on FIRE"),
         "bounce@evil.example", ELSEWHERE, "fail", "quarantined"),
        (make_mail(sender="Nora <nora@nodmarc.example>", subject="no dmarc, spf fail"), "nora@nodmarc.example",
         ELSEWHERE, "fail", "quarantined"),
        (make_mail(sender="Nora <nora@nodmarc.example>", subject="no dmarc, spf pass"), "nora@nodmarc.example",
         SPF_OK, "pass", "ticket"),
        (make_mail(sender="Paul <paul@plain.example>", subject="publishes nothing"), "paul@plain.example",
         ELSEWHERE, "none", "ticket"),
    ]
    for raw, frm, ip, _, _ in cases:
        assert send(port, raw, frm, source=ip)[0] == 250
    mails = r.wait_processed(len(cases))
    got = [(m.subject, auth_of(m)["verdict"], m.outcome) for m in mails]
    assert got == [(m.subject, v, o) for m, (_, _, _, v, o) in zip(mails, cases, strict=True)], got
    signed_mail, spf_mail, forged, tampered = mails[:4]
    assert (auth_of(signed_mail)["dkim"], auth_of(signed_mail)["dmarc"], auth_of(signed_mail)["spf"]) == \
        ("pass", "pass", "fail")
    assert auth_of(signed_mail)["aligned"] == "corp.example"
    assert (auth_of(spf_mail)["spf"], auth_of(spf_mail)["dmarc"]) == ("pass", "pass")
    assert spf_mail.client_ip == SPF_OK and spf_mail.client_helo == "client.example"
    assert forged.reason.startswith("sender authentication failed") and auth_of(forged)["dmarc_policy"] == "reject"
    assert auth_of(tampered)["dkim"] == "fail"
    assert any("unverified sender" in t for t in mails[6].trace)
    # a quarantined mail made nothing and mailed nobody
    assert {o.recipient for o in r.outbox()} == {"victim@corp.example", "nora@nodmarc.example", "paul@plain.example"}


def test_issue_attack_trusted_dmarc_fail_from_our_mta(gateway):
    """The issue's attack: From the victim, our MTA's Authentication-Results say dmarc=fail, Cc the attacker,
    In-Reply-To the victim's ticket. Before: the victim's comment, the attacker a watcher who gets the staff's
    next answer. Now: quarantined; no comment, no watcher, no mail to anyone."""
    r = gateway(authentication={"trusted_authserv_ids": ["mx.gw.test"], "verify": False})
    lmtp = r.port("lmtp")
    first = make_mail(sender=VICTIM, subject="My invoice",
                      headers={"Authentication-Results": "mx.gw.test; dmarc=pass header.from=corp.example",
                               "Received": "from mail.corp.example by mx.gw.test; Mon, 2 Nov 2026 09:00:00 +0000"})
    assert send(lmtp, first, "victim@corp.example", lmtp=True)[0] == 250  # from 127.0.0.1: our MTA
    r.wait_processed(1)
    attack = make_mail(sender=VICTIM, subject="Re: My invoice", cc=ATTACKER, in_reply_to=message_id_of(first),
                       headers={"Authentication-Results": "mx.gw.test; dmarc=fail (p=reject) header.from=corp.example",
                                "Received": "from evil by mx.gw.test; Mon, 2 Nov 2026 09:10:00 +0000"})
    assert send(lmtp, attack, "victim@corp.example", lmtp=True)[0] == 250
    mails = r.wait_processed(2)
    assert mails[1].outcome == "quarantined" and mails[1].reason.startswith("sender authentication failed")
    assert auth_of(mails[1])["by"] == "trusted mx.gw.test"
    (ticket,) = r.tickets()
    assert ticket.comments == [] and [w.contact.email for w in ticket.watchers] == []
    assert ATTACKER not in {o.recipient for o in r.outbox()}
    with r.app.sessions() as s:
        assert s.scalar(select(Contact).where(Contact.email == ATTACKER)) is None

    # the admin looks at it and replays it: now it is the victim's comment (and the attacker a silent watcher)
    out = run_cli("--config", str(_toml(r)), "mail", "show", str(mails[1].id), "--json")
    shown = json.loads(out.stdout)
    assert shown["authentication"]["verdict"] == "fail", shown
    assert any("FAILED" in line for line in shown["trace"])
    rep = run_cli("--config", str(_toml(r)), "mail", "replay", str(mails[1].id))
    assert rep.returncode == 0 and b"comment" in rep.stdout, rep.stdout + rep.stderr


def _toml(r: Running) -> Path:
    """A config file for the CLI that points at the running service's database."""
    cfg = r.service.config
    p = Path(cfg.base_dir) / "cli.toml"
    p.write_text(f'[gateway]\ndata_dir = "{cfg.data_dir}"\naddresses = ["support@example.com"]\n'
                 f'unknown_senders = "register"\n[database]\nurl = "{cfg.database_url}"\n'
                 '[authentication]\ntrusted_authserv_ids = ["mx.gw.test"]\n')
    return p


def test_authentication_results_are_believed_only_from_our_mta_above_received(gateway):
    r = gateway(authentication={"trusted_authserv_ids": ["mx.gw.test"], "verify": False})
    smtp = r.port("smtp")
    below = (b"Received: from x by mx.gw.test; Mon, 2 Nov 2026 09:10:00 +0000\r\n"
             b"Authentication-Results: mx.gw.test; dmarc=fail header.from=corp.example\r\n" +
             make_mail(sender=VICTIM, subject="below received"))
    foreign = (b"Authentication-Results: mx.evil.example; dmarc=fail header.from=corp.example\r\n"
               b"Received: from x by mx.gw.test; Mon, 2 Nov 2026 09:10:00 +0000\r\n" +
               make_mail(sender=VICTIM, subject="foreign id"))
    direct = (b"Authentication-Results: mx.gw.test; dmarc=fail header.from=corp.example\r\n"
              b"Received: from x by mx.gw.test; Mon, 2 Nov 2026 09:10:00 +0000\r\n" +
              make_mail(sender=VICTIM, subject="straight from a stranger"))
    assert send(smtp, below, "victim@corp.example")[0] == 250
    assert send(smtp, foreign, "victim@corp.example")[0] == 250
    assert send(smtp, direct, "victim@corp.example", source=ELSEWHERE)[0] == 250  # not a trusted relay
    mails = r.wait_processed(3)
    # none of the three is believed (all say fail, none quarantines), each is marked in the trace
    assert [m.outcome for m in mails] == ["ticket", "ticket", "ticket"]
    assert any("below the topmost Received" in t for t in mails[0].trace)
    assert any("mx.evil.example ignored: not a trusted authserv-id" in t for t in mails[1].trace)
    assert any("not one of authentication.trusted_relays" in t for t in mails[2].trace)


def test_unverified_sender_cc_are_silent_watchers_authenticated_sender_cc_are_mailed(gateway, dkim_key):
    r = gateway()
    smtp = r.port("smtp")
    cc = "Carol <carol@partner.example>, Dan <dan@partner.example>"
    unverified = make_mail(sender="Paul <paul@plain.example>", subject="plain", cc=cc)
    authentic = signed(make_mail(sender=VICTIM, subject="signed", cc=cc), dkim_key[0])
    assert send(smtp, unverified, "paul@plain.example", source=ELSEWHERE)[0] == 250
    assert send(smtp, authentic, "victim@corp.example", source=ELSEWHERE)[0] == 250
    r.wait_processed(2)
    t1, t2 = r.tickets()
    assert sorted(w.contact.email for w in t1.watchers) == ["carol@partner.example", "dan@partner.example"]
    assert all(w.vouched is None for w in t1.watchers)
    assert all(w.vouched == "Cc'd by authenticated victim@corp.example" for w in t2.watchers)
    acks = {(o.ticket_id, o.recipient) for o in r.outbox() if o.event == "ticket_created"}
    assert acks == {(t1.id, "paul@plain.example"), (t2.id, "victim@corp.example"),
                    (t2.id, "carol@partner.example"), (t2.id, "dan@partner.example")}


def test_ingest_verifies_with_client_ip_and_quarantines_forged_from(tmp_path, db_url, zone, dkim_key):
    cfg = write_config(tmp_path, db_url, f'\n[authentication]\nverify = true\ndns_servers = ["{zone.address}"]\n')
    forged = make_mail(sender=VICTIM, subject="via the pipe")
    args = ("ingest", "--sender", "victim@corp.example", "--recipient", "support@example.com", "--json")
    bad = run_cli(*args, "--client-ip", ELSEWHERE, "--helo", "evil.example", config=cfg, input=forged)
    ok = run_cli(*args, "--client-ip", SPF_OK, "--helo", "mail.corp.example", config=cfg,
                 input=make_mail(sender=VICTIM, subject="via the pipe, from corp"))
    dk = run_cli(*args, config=cfg, input=signed(make_mail(sender=VICTIM, subject="signed, no ip"), dkim_key[0]))
    results = [json.loads(p.stdout) for p in (bad, ok, dk)]
    assert [x["outcome"] for x in results] == ["quarantined", "ticket", "ticket"], [p.stderr for p in (bad, ok, dk)]
    assert results[0]["reason"].startswith("sender authentication failed")
    shown = run_cli("mail", "show", str(results[0]["mail_id"]), config=cfg)
    assert b"authentication:" in shown.stdout and b"spf=fail" in shown.stdout, shown.stdout
    # without a client IP no SPF is checked; the DKIM signature authenticates it
    assert any("SPF not checked: no client IP known" in t for t in results[2]["trace"])


def test_dns_down_is_unverified_not_failed(tmp_path, db_url):
    """A resolver that never answers: the budget runs out, the result is 'none' (a new ticket is allowed)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        r = Running(config_for(tmp_path, db_url, authentication={
            "verify": True, "dns_servers": [f"127.0.0.1:{silent.getsockname()[1]}"], "dns_timeout_seconds": 1}))
        try:
            assert send(r.port("smtp"), make_mail(sender=VICTIM), "victim@corp.example", source=ELSEWHERE)[0] == 250
            (m,) = r.wait_processed(1)
        finally:
            r.stop()
    assert m.outcome == "ticket" and m.auth["verdict"] == "none", m.auth
    assert m.auth["spf"] == "temperror"


def test_outbox_never_reaches_the_attacker_after_replay(gateway):
    """Even a replayed (accepted) spoof does not make the gateway mail the Cc'd attacker: he is a silent watcher."""
    r = gateway(authentication={"trusted_authserv_ids": ["mx.gw.test"], "verify": False})
    raw = make_mail(sender=VICTIM, subject="spoof", cc=ATTACKER,
                    headers={"Authentication-Results": "mx.gw.test; dmarc=fail header.from=corp.example",
                             "Received": "from evil by mx.gw.test; Mon, 2 Nov 2026 09:10:00 +0000"})
    assert send(r.port("lmtp"), raw, "victim@corp.example", lmtp=True)[0] == 250
    (m,) = r.wait_processed(1)
    assert m.outcome == "quarantined"
    res = r.app.intake().replay(m.id)
    assert res.outcome == "ticket", res.trace
    with r.app.sessions() as s:
        rcpts = set(s.scalars(select(OutboxMail.recipient)))
    assert ATTACKER not in rcpts and "victim@corp.example" in rcpts

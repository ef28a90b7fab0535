"""The README's Postfix setups, proven with a real Postfix (a private instance, tests/postfix.py) in front of
the gateway: mail is sent to Postfix over SMTP, as a customer's server would, and Postfix delivers it.

- LMTP to `serve`: a mail becomes a ticket; the acknowledgement leaves through the same Postfix and lands in
  the customer's mailbox; the customer's reply to it, sent back through Postfix, becomes a comment.
- `serve` down: Postfix defers the mail with a 4xx; once `serve` is back and the queue is flushed, the mail
  is exactly one ticket.
- The pipe transport with the README's settings (recipient limit 1, --config in argv): a mail to two gateway
  addresses is one ticket; a recipient that is not a gateway address is refused (bounced 5.1.1).
- relay_domains + relay_recipient_maps: mail from outside the local network is accepted for the support
  addresses and refused at RCPT for others.

The transcript (Postfix's log lines of the deliveries) is printed at the end of each test (`pytest -s`).
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import pwd
import shutil
import signal
import smtplib
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from postfix import Postfix, free_port, postfix_binary, start_postfix

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a Postfix instance runs as root")

PIPE_USER = "nobody"


def mail(subject: str, to: str, body: str = "Hello.\n", sender: str = "Alice Customer <alice@customer.example>",
         **headers: str) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = make_msgid(domain="customer.example")
    m["Date"] = email.utils.formatdate()
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    return bytes(m)


def send(pf: Postfix, raw: bytes, rcpts: list[str], sender: str = "alice@customer.example") -> dict[str, tuple]:
    """SMTP to Postfix; returns the refused recipients (code, text)."""
    with smtplib.SMTP("127.0.0.1", pf.port, timeout=30) as s:
        try:
            return s.sendmail(sender, rcpts, raw)
        except smtplib.SMTPRecipientsRefused as e:
            return e.recipients


def transcript(pf: Postfix, *needles: str) -> list[str]:
    """The log lines that tell what happened to the deliveries (shortened: date and pid dropped)."""
    keep = ("status=", "reject:", "daemon started")
    out = []
    for line in pf.log.splitlines():
        if any(k in line for k in keep) and (not needles or any(n in line for n in needles)):
            out.append(line.split(" mx ", 1)[-1])
    return out


def pipe_wrapper(path: Path) -> Path:
    """The gateway's command for the pipe user: the test's virtualenv (its editable install included) under an
    interpreter that user may run (the test's own may live under /root)."""
    interp = sys.executable
    system = Path("/usr/bin/python3")
    if system.exists():
        v = subprocess.run([str(system), "-c", "import sys; print(sys.version_info[:2])"], capture_output=True,
                           text=True).stdout.strip()
        if v == str(tuple(sys.version_info[:2])):
            interp = str(system)
    site_dir = sysconfig.get_paths()["purelib"]
    path.write_text(f"#!{interp}\nimport site\nsite.addsitedir({site_dir!r})\nfrom gateway.cli import entry\n"
                    "entry()\n")
    path.chmod(0o755)
    return path


@dataclass
class Gateway:
    """`ticket-gateway serve` with LMTP on a loopback port, mail out through the Postfix."""
    config: Path
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("TICKET_GATEWAY_CONFIG", "NOTIFY_SOCKET")}
        seen = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(self.config), "serve"],
                                         stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            if "listening:" in self.log.read_text()[seen:]:
                return
            time.sleep(0.1)
        raise AssertionError("serve did not listen: " + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(40)

    def cli(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return run_cli(*args, config=self.config)

    def tickets(self) -> list[dict]:
        p = self.cli("tickets", "list", "--json")
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def wait_tickets(self, predicate, timeout: float = 60) -> list[dict]:
        end = time.monotonic() + timeout
        while True:
            tickets = self.tickets()
            if predicate(tickets):
                return tickets
            if time.monotonic() > end:
                raise AssertionError(f"tickets: {tickets}\nserve log: {self.log.read_text()[-3000:]}")
            time.sleep(0.3)


@dataclass
class MailHost:
    pf: Postfix
    gw: Gateway
    pipe_config: Path
    pipe_db: Path
    pipe_cmd: Path


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[MailHost]:
    if postfix_binary() is None:
        pytest.fail("postfix is not installed (Debian: apt-get install -y postfix); the README's test command "
                    "installs it")
    base = tmp_path_factory.mktemp("mailhost")
    lmtp_port = free_port()
    socket_path = base / "run" / "lmtp.sock"  # as /run/ticket-gateway/lmtp.sock under the systemd unit
    socket_path.parent.mkdir(mode=0o755)
    # the pipe gateway: its own config and SQLite store, owned by the pipe user
    pipe_dir = base / "pipe-gw"
    (pipe_dir / "var").mkdir(parents=True)
    pipe_config = pipe_dir / "config.toml"
    pipe_config.write_text(f'''[gateway]
data_dir = "{pipe_dir / 'var'}"
addresses = ["pipe@example.org", "help@example.org"]
''')
    pipe_cmd = pipe_wrapper(base / "ticket-gateway")
    assert run_cli("db", "upgrade", config=pipe_config).returncode == 0
    nobody = pwd.getpwnam(PIPE_USER)
    for p in [pipe_dir, *pipe_dir.rglob("*")]:
        os.chown(p, nobody.pw_uid, nobody.pw_gid)
    # The README's pipe settings, as written there, with this test's user and paths
    readme = (ROOT / "README.md").read_text()
    pipe_line = next(line for line in readme.splitlines() if line.strip().startswith("flags=") and "deliver" in line)
    assert "ticketgw_destination_recipient_limit = 1" in readme
    pipe_line = (pipe_line.replace("user=ticket-gateway", f"user={PIPE_USER}")
                 .replace("/opt/ticket-gateway/.venv/bin/ticket-gateway", str(pipe_cmd))
                 .replace("/etc/ticket-gateway/config.toml", str(pipe_config)))
    master_extra = f"ticketgw unix - n n - 4 pipe\n  {pipe_line.strip()}\n"
    pf = start_postfix(
        base / "postfix",
        transport={"support@example.com": f"lmtp:inet:127.0.0.1:{lmtp_port}",
                   "billing@example.com": f"lmtp:inet:127.0.0.1:{lmtp_port}",
                   "it@example.com": f"lmtp:unix:{socket_path}",
                   "example.org": "ticketgw:"},
        relay_domains=["example.com", "example.org"],
        relay_recipients=["support@example.com", "billing@example.com", "it@example.com", "@example.org"],
        mailboxes=["alice@customer.example", "bob@customer.example"],
        master_extra=master_extra, main_extra="ticketgw_destination_recipient_limit = 1\n")
    gw_dir = base / "lmtp-gw"
    gw_dir.mkdir()
    config = gw_dir / "config.toml"
    config.write_text(f'''[gateway]
data_dir = "{gw_dir / 'var'}"
addresses = ["support@example.com", "billing@example.com", "it@example.com"]

[[listen]]
protocol = "lmtp"
host = "127.0.0.1"
port = {lmtp_port}

[[listen]]
protocol = "lmtp"
path = "{socket_path}"
socket_mode = "0666"

[serve]
hostname = "gw.test.example"
pending_sweep_seconds = 1

[http]
listen = "127.0.0.1:0"

[outbound]
relay_host = "127.0.0.1"
relay_port = {pf.port}
relay_security = "none"
deliver_seconds = 1
retry_base_seconds = 1
''')
    gw = Gateway(config, lmtp_port, gw_dir / "serve.log")
    try:
        gw.start()
        yield MailHost(pf, gw, pipe_config, pipe_dir / "var" / "gateway.db", pipe_cmd)
    finally:
        gw.stop()
        pf.stop()
        print("\n--- postfix log ---\n" + "\n".join(transcript(pf)))
        shutil.rmtree(base / "postfix" / "spool", ignore_errors=True)


def wait_maildir(pf: Postfix, address: str, n: int, timeout: float = 60) -> list[email.message.EmailMessage]:
    box = pf.mailbox(address) / "new"
    end = time.monotonic() + timeout
    while True:
        files = sorted(box.glob("*")) if box.is_dir() else []
        if len(files) >= n:
            return [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                    for f in files]
        if time.monotonic() > end:
            raise AssertionError(f"{len(files)} mail(s) in {box}\n" + "\n".join(transcript(pf)[-20:]))
        time.sleep(0.2)


def test_lmtp_delivery_acknowledgement_and_reply(host: MailHost) -> None:
    pf, gw = host.pf, host.gw
    raw = mail("VPN drops every hour", "support@example.com", body="Since Monday the VPN drops.\n")
    assert send(pf, raw, ["support@example.com"]) == {}
    tickets = gw.wait_tickets(lambda ts: any(t["subject"] == "VPN drops every hour" for t in ts))
    ticket = next(t for t in tickets if t["subject"] == "VPN drops every hour")
    lines = pf.wait_log(lambda ls: any("to=<support@example.com>" in x and "status=sent" in x for x in ls))
    sent = [x for x in lines if "to=<support@example.com>" in x and "status=sent" in x]
    assert f"relay=127.0.0.1[127.0.0.1]:{gw.port}" in sent[0] and "250 2.0.0" in sent[0], sent
    # the acknowledgement, relayed through Postfix into the customer's mailbox
    ack = wait_maildir(pf, "alice@customer.example", 1)[0]
    assert f"[#{ticket['number']}]" in ack["Subject"]
    reply_to = ack["Reply-To"].addresses[0].addr_spec if ack["Reply-To"] else ack["From"].addresses[0].addr_spec
    assert reply_to.startswith("support+") and reply_to.endswith("@example.com"), reply_to
    # the customer answers it from their mail client: back through Postfix, to the reply address
    answer = mail(f"Re: {ack['Subject']}", reply_to, body="It dropped again at 10:00.\n\n> quoted text\n",
                  In_Reply_To=ack["Message-ID"], References=ack["Message-ID"])
    assert send(pf, answer, [reply_to]) == {}
    end = time.monotonic() + 60
    while True:
        shown = json.loads(gw.cli("tickets", "show", str(ticket["number"]), "--json").stdout)
        if shown["comments"]:
            break
        assert time.monotonic() < end, gw.log.read_text()[-2000:]
        time.sleep(0.3)
    assert shown["comments"][0]["body"] == "It dropped again at 10:00."
    assert shown["comments"][0]["author"] == "alice@customer.example"
    assert len([t for t in gw.tickets() if t["subject"] == "VPN drops every hour"]) == 1
    print("\n" + "\n".join(transcript(pf, "support")))


def test_serve_down_postfix_defers_then_delivers_once(host: MailHost) -> None:
    pf, gw = host.pf, host.gw
    gw.stop()
    raw = mail("Sent while the gateway was down", "billing@example.com")
    assert send(pf, raw, ["billing@example.com"]) == {}
    lines = pf.wait_log(lambda ls: any("to=<billing@example.com>" in x and "status=deferred" in x for x in ls))
    deferred = [x for x in lines if "to=<billing@example.com>" in x and "status=deferred" in x]
    assert "dsn=4." in deferred[0], deferred
    queued = pf.queue()
    assert [q["recipients"][0]["address"] for q in queued] == ["billing@example.com"]
    assert queued[0]["queue_name"] == "deferred"
    gw.start()
    pf.flush()
    gw.wait_tickets(lambda ts: any(t["subject"] == "Sent while the gateway was down" for t in ts))
    pf.wait_log(lambda ls: any("to=<billing@example.com>" in x and "status=sent" in x for x in ls))
    end = time.monotonic() + 30
    while pf.queue() and time.monotonic() < end:  # the acknowledgement may still be on its way out
        time.sleep(0.2)
    pf.flush()  # nothing left to deliver twice
    time.sleep(1)
    assert [t for t in gw.tickets() if t["subject"] == "Sent while the gateway was down"].__len__() == 1
    sent = [x for x in pf.log.splitlines() if "to=<billing@example.com>" in x and "status=sent" in x]
    assert len(sent) == 1, sent
    print("\n" + "\n".join(transcript(pf, "billing")))


def pipe_cli(host: MailHost, *args: str) -> subprocess.CompletedProcess[str]:
    """The pipe gateway's CLI, as its user (its store belongs to that user)."""
    env = {k: v for k, v in os.environ.items() if k != "TICKET_GATEWAY_CONFIG"}
    nobody = pwd.getpwnam(PIPE_USER)
    return subprocess.run(["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
                           str(host.pipe_cmd), "--config", str(host.pipe_config), *args],
                          capture_output=True, text=True, env=env, timeout=60, cwd="/")


def test_pipe_two_gateway_addresses_one_ticket_and_foreign_recipient_bounced(host: MailHost) -> None:
    pf = host.pf
    raw = mail("Invoice question", "pipe@example.org, help@example.org")
    assert send(pf, raw, ["pipe@example.org", "help@example.org"]) == {}
    lines = pf.wait_log(lambda ls: sum("status=sent" in x and "relay=ticketgw" in x for x in ls) >= 2)
    assert not [x for x in lines if "relay=ticketgw" in x and "status=sent" not in x], lines
    # `deliver` exited once each mail was spooled; the drainer it started stores them
    deadline = time.monotonic() + 60
    while len(json.loads(pipe_cli(host, "mail", "list", "--json").stdout)) < 2 and time.monotonic() < deadline:
        time.sleep(0.3)
    tickets = json.loads(pipe_cli(host, "tickets", "list", "--json").stdout)
    assert [t["subject"] for t in tickets] == ["Invoice question"]
    mails = json.loads(pipe_cli(host, "mail", "list", "--json").stdout)
    assert sorted(m["outcome"] for m in mails) == ["duplicate", "ticket"]
    assert sorted(r for m in mails for r in m["envelope_to"]) == ["help@example.org", "pipe@example.org"]
    # a recipient of the piped domain that is not a gateway address: refused, nothing stored
    stranger = mail("Hello?", "sales@example.org")
    assert send(pf, stranger, ["sales@example.org"]) == {}
    lines = pf.wait_log(lambda ls: any("to=<sales@example.org>" in x and "status=bounced" in x for x in ls))
    bounced = [x for x in lines if "to=<sales@example.org>" in x and "status=bounced" in x][0]
    assert "dsn=5.1.1" in bounced and "not a gateway address" in bounced, bounced
    assert len(json.loads(pipe_cli(host, "mail", "list", "--json").stdout)) == 2
    print("\n" + "\n".join(transcript(pf, "example.org")))


def test_lmtp_over_a_unix_socket(host: MailHost) -> None:
    """The README's Unix-socket variant: Postfix's lmtp client (the postfix user, not chrooted here) delivers
    to a socket of mode 0666 in a directory of mode 0755, as the unit's RuntimeDirectory."""
    pf, gw = host.pf, host.gw
    assert send(pf, mail("Printer jams", "it@example.com"), ["it@example.com"]) == {}
    gw.wait_tickets(lambda ts: any(t["subject"] == "Printer jams" for t in ts))
    lines = pf.wait_log(lambda ls: any("to=<it@example.com>" in x and "status=sent" in x for x in ls))
    assert any("lmtp.sock" in x and "status=sent" in x for x in lines)
    print("\n" + "\n".join(transcript(pf, "it@example.com")))


def test_relay_domains_accept_support_addresses_refuse_others(host: MailHost) -> None:
    refused = send(host.pf, mail("x", "nobody@example.com"), ["support+whatever@example.com", "nobody@example.com",
                                                              "someone@elsewhere.example"])
    assert set(refused) == {"nobody@example.com", "someone@elsewhere.example"}
    assert refused["nobody@example.com"][0] == 550
    assert refused["someone@elsewhere.example"][0] == 454  # not ours to relay
    assert not any("nobody@example.com" in x and "status=" in x for x in host.pf.log.splitlines())
    host.pf.wait_log(lambda ls: any("to=<support+whatever@example.com>" in x and "status=sent" in x for x in ls))


def test_outbox_mails_pipelined_through_postfix(host: MailHost) -> None:
    """A public comment's notifications in one delivery round, pipelined (Postfix announces PIPELINING): each
    arrives once in its mailbox."""
    pf, gw = host.pf, host.gw
    made = gw.cli("tickets", "create", "--subject", "Pipelined printer", "--reporter", "alice@customer.example",
                  "--json")
    assert made.returncode == 0, made.stderr
    number = json.loads(made.stdout)["number"]
    watch = gw.cli("tickets", "watch", str(number), "bob@customer.example")  # added by staff: mailed
    assert watch.returncode == 0, watch.stderr
    said = gw.cli("tickets", "comment", str(number), "--body", "The toner is on its way.\n")
    assert said.returncode == 0, said.stderr
    for who in ("alice@customer.example", "bob@customer.example"):
        end = time.monotonic() + 120  # serve's delivery job, then Postfix's: slow on a loaded machine
        while True:
            box = pf.mailbox(who) / "new"
            mails = [email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                     for f in (sorted(box.glob("*")) if box.is_dir() else [])]
            got = [m for m in mails if f"[#{number}]" in str(m["Subject"])
                   and "toner is on its way" in m.get_body(("plain",)).get_content()]
            if got:
                break
            assert time.monotonic() < end, "\n".join(transcript(pf)[-20:]) + "\n" + gw.log.read_text()[-2000:]
            time.sleep(0.3)
        time.sleep(1)  # a second copy would be there by now
        again = [m for m in (email.message_from_bytes(f.read_bytes(), policy=email.policy.default)
                             for f in sorted((pf.mailbox(who) / "new").glob("*")))
                 if str(m["Message-ID"]) == str(got[0]["Message-ID"])]
        assert len(got) == 1 and len(again) == 1, [str(m["Subject"]) for m in mails]

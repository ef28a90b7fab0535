"""Configuration: a documented schema, TOML loading and validation.

The schema below is the single source of truth: `config.example.toml` is generated from it
(`ticket-gateway check-config --example`) and a test keeps the two equal. A wrong key or a bad value stops
start-up with a `ConfigError` that names the key.
"""

from __future__ import annotations

import builtins
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "TICKET_GATEWAY_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key. `errors`: every problem found, one line
    each (validation reports them all at once)."""

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.errors: list[str] = errors or [message]


@dataclass(frozen=True)
class Key:
    type: builtins.type | tuple[builtins.type, ...]
    default: Any
    doc: str
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    item_type: builtins.type | None = None  # for lists
    normalize: Callable[[Any], Any] | None = None  # applied to a value of the right type before choices/check


@dataclass(frozen=True)
class Section:
    doc: str
    keys: Mapping[str, Key]
    many: bool = False  # an array of tables ([[name]])
    example_items: tuple[Mapping[str, Any], ...] = ()


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


_ADDR = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


def _addresses(v: list[str]) -> str | None:
    bad = [a for a in v if not _ADDR.match(a)]
    return f"not an email address: {bad[0]!r}" if bad else None


def _port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0-65535"


def http_address(v: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); raises ValueError."""
    host, sep, port = v.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("host:port, e.g. 127.0.0.1:8025 or [::1]:8025")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 <= int(port) <= 65535:
        raise ValueError("port must be 0-65535")
    return host, int(port)


def _http_listen(v: str) -> str | None:
    if not v:
        return None
    try:
        http_address(v)
    except ValueError as e:
        return str(e)
    return None


def _tag_prefix(v: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9#_-]{1,16}", v) else "letters, digits, # _ - only (1-16)"


def _group_addresses(v: dict[str, Any]) -> str | None:
    bad = [k for k, a in v.items() if not isinstance(a, str) or not _ADDR.match(a)]
    return f"{bad[0]}: not an email address: {v[bad[0]]!r}" if bad else None


def _networks(v: list[str]) -> str | None:
    import ipaddress

    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"not an IP address or network: {item!r}"
    return None


def _addr_or_domain(v: list[str]) -> str | None:
    bad = [a for a in v if not (_ADDR.match(a) or re.fullmatch(r"@?[A-Za-z0-9.-]+\.[A-Za-z0-9-]+", a))]
    return f"not an email address or a domain: {bad[0]!r}" if bad else None


def dns_server(item: str) -> tuple[str, int]:
    """'IP', 'IP:port' or '[IPv6]:port' -> (ip, port); raises ValueError."""
    import ipaddress

    host, port = item, 53
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", item)
    if m:
        host, port = m.group(1), int(m.group(2) or 53)
    elif item.count(":") == 1:
        host, _, p = item.partition(":")
        port = int(p)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(item)
    return host, port


def _dns_servers(v: list[str]) -> str | None:
    for item in v:
        try:
            dns_server(item)
        except ValueError:
            return f"not 'IP' or 'IP:port': {item!r}"
    return None


TYPES_OR_STAR = ("incident", "problem", "service_request", "change_request", "*")


def _mapping(v: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for k, x in v.items():
        if k not in keys:
            return f"{k}: not one of {', '.join(keys)}"
        if not isinstance(x, (str, int)) or isinstance(x, bool) or str(x) == "":
            return f"{k}: expected a non-empty string or number, got {x!r}"
    return None


def _statuses(v: dict[str, Any]) -> str | None:
    local = ("open", "in_progress", "pending", "resolved", "closed")
    for k, x in v.items():
        if x not in local:
            return f"{k}: {x!r} is not a local status ({', '.join(local)})"
    return None


NOTIFY_RULES = ("assignee", "group", "all")


def _notify_rules(v: list[str]) -> str | None:
    bad = [r for r in v if r not in NOTIFY_RULES]
    if bad:
        return f"{bad[0]!r} is not one of {', '.join(NOTIFY_RULES)}"
    return "a rule is listed twice" if len(set(v)) != len(v) else None


def _sla_policies(v: list[Any]) -> str | None:
    from gateway.sla_definitions import check_seed  # only when the config seeds policies

    return check_seed(v)


SCHEMA: dict[str, Section] = {
    "gateway": Section(
        "What the gateway is and whom it serves.",
        {
            "data_dir": Key(str, "./var",
                            "Directory for the SQLite database, attachments and the local outbox Maildir."),
            "addresses": Key(
                list, ["support@localhost"],
                "Addresses the gateway receives mail for (and their +token sub-addresses). Never made watchers.",
                item_type=str, check=_addresses),
            "unknown_senders": Key(
                str, "correspondent",
                "Mail from an address that is not a known contact: 'correspondent' opens the ticket with the "
                "sender as its reporter, a correspondent without an account (no organisation, not a registered "
                "customer; `users add` registers them later); 'register' also makes them a registered customer "
                "contact with their name and organisation (by mail domain); 'reject' records the mail as rejected; "
                "'default-reporter' files the ticket under gateway.default_reporter (the sender is recorded).",
                choices=("correspondent", "register", "reject", "default-reporter")),
            "default_reporter": Key(str, "unknown-sender@localhost",
                                    "Contact used as reporter under unknown_senders = 'default-reporter'.",
                                    check=lambda v: _addresses([v])),
            "subject_tag_prefix": Key(str, "#", "Subject tag prefix: '#' gives '[#42]'.", check=_tag_prefix),
            "reopen_days": Key(int, 14, "A reply to a closed ticket reopens it within this many days of closing; "
                               "later it opens a new ticket linked to the old one.", check=_non_negative),
            "reply_wait_seconds": Key(int, 300, "A reply whose original (a mail its In-Reply-To or References names) "
                                      "is stored but not threaded yet waits for it, at most this many seconds from "
                                      "its arrival, so that it becomes a comment on the original's ticket; then it "
                                      "is threaded without it. 0: never wait.", check=_non_negative),
            "body_delimiters": Key(list, [], "Lines that end the useful text of a mail (for example "
                                   "'--- Reply above this line ---'); the text from such a line on is dropped from "
                                   "the visible text (also when quoted with '>'). The full text is kept.",
                                   item_type=str),
            "body_delimiters_regex": Key(bool, False, "Treat gateway.body_delimiters as regular expressions "
                                         "(Python syntax) matched against whole lines."),
            "staff_comments_internal": Key(bool, False,
                                           "DEPRECATED (a start-up warning says so): every comment staff send by "
                                           "mail becomes an internal note, so no customer gets an answer by "
                                           "mail. Mark a single mail instead: the /internal command, or mail to "
                                           "the note address (staff.note_subaddress)."),
            "refuse_close_while_blocked": Key(
                bool, True, "Resolving or closing a ticket that another open ticket blocks (a 'blocks' link: "
                "`tickets link N M --kind blocked-by`) is refused with the reason; false allows it."),
        },
    ),
    "staff": Section(
        "Staff working by mail: commands at the top of their mails, internal notes, and who hears of a "
        "customer's reply (per group: [[groups]]).",
        {
            "commands": Key(bool, True, "Staff may change a ticket with /command lines at the top of their mail "
                            "(/status, /assign, /tag, /link, /time, /internal, ...). Only staff contacts, and where "
                            "sender authentication is configured only mail that passes it; anyone else's slash "
                            "lines are plain text. Each such mail is confirmed to its sender by one automatic "
                            "mail."),
            "note_subaddress": Key(str, "note", "Mail from staff to <gateway address local part>+<this>@<domain> "
                                   "(support+note@example.com) is an internal note on the ticket it names "
                                   "(In-Reply-To, subject tag); staff notifications also show a per-ticket note "
                                   "address (support+note-<ticket>-<signature>@...), the Reply-To of internal-note "
                                   "notices. Empty: no note address (the /internal command still works).",
                                   check=lambda v: None if not v or re.fullmatch(r"[a-z][a-z0-9_]{0,30}", v)
                                   else "lower-case letters, digits, _ (1-31), starting with a letter"),
            "notify": Key(list, ["assignee", "group", "all"], "Who hears of a customer's public comment: the "
                          "first of these rules that names anyone -- 'assignee' (the ticket's assignee), 'group' "
                          "(the members of the ticket's group, [[groups]] members), 'all' (every staff contact). "
                          "Staff watching the ticket always hear of it. A group's own notify replaces this list "
                          "for its tickets. Empty: nobody but the watching staff.", item_type=str,
                          check=lambda v: _notify_rules(v)),
            "max_notices_per_ticket_hour": Key(int, 200, "Staff notices are never held back by the loop caps "
                                               "meant for customers (notifications.max_per_ticket_10min, "
                                               "max_per_recipient_day); this separate bound stops a ticket that "
                                               "misbehaves: at most this many mails to staff per ticket in an "
                                               "hour, the rest are suppressed (listed in the outbox).",
                                               check=_positive),
        },
    ),
    "groups": Section(
        "Staff groups ([[groups]], any number): who belongs to a ticket's group (tickets.group, set by "
        "[[routes]], /group, `tickets set --group`) and how its members hear of customers.",
        {
            "name": Key(str, None, "Required: the group's name as tickets carry it.",
                        check=lambda v: None if 1 <= len(v) <= 100 else "1-100 characters"),
            "members": Key(list, [], "The members' addresses (staff contacts; they are mailed as listed).",
                           item_type=str, check=_addresses),
            "notify": Key(list, ["assignee", "group", "all"], "staff.notify for this group's tickets.",
                          item_type=str, check=lambda v: _notify_rules(v)),
        },
        many=True,
        example_items=({"name": "first-level", "members": ["bob@example.com"], "notify": ["assignee", "group"]},),
    ),
    "database": Section(
        "Where tickets live.",
        {
            "url": Key(str, "", "SQLAlchemy URL. Empty: sqlite under gateway.data_dir. PostgreSQL: "
                       "'postgresql+psycopg://user@host/dbname'."),
            "busy_timeout_ms": Key(int, 30000, "SQLite: how long a writer waits for the lock.", check=_positive),
            "pool_size": Key(int, 5, "PostgreSQL: connections kept open per process.", check=_positive),
        },
    ),
    "attachments": Section(
        "Attachment storage (content-addressed by sha256).",
        {
            "path": Key(str, "", "Directory. Empty: <gateway.data_dir>/attachments."),
            "prune_minutes": Key(int, 10, "serve looks for orphaned blobs this often (blobs no attachment "
                                 "refers to: written for a mail that then kept nothing, a duplicate, an ignored or "
                                 "quarantined mail), at most 5000 blobs a time, and removes them. 0: never (then "
                                 "`ticket-gateway db prune-attachments` does it).", check=_non_negative),
            "prune_grace_hours": Key(int, 24, "A blob no attachment refers to is removed only when it was not "
                                     "written for this many hours (a mail being threaded now has its blobs "
                                     "written just before).", check=_positive),
        },
    ),
    "limits": Section(
        "Guards against hostile or broken mail.",
        {
            "max_message_size": Key(int, 50 * 1024 * 1024, "Largest mail accepted, in bytes.", check=_positive),
            "max_mime_depth": Key(int, 50, "Deepest MIME nesting parsed; deeper mail is quarantined.",
                                  check=_positive),
            "max_mime_parts": Key(int, 1000, "Most MIME parts parsed; more is quarantined.", check=_positive),
            "mail_cpu_seconds": Key(float, 2.0, "CPU seconds the preparation of one mail (parsing, HTML to text, "
                                    "sanitising, classifying, attachments) may take. It runs in a worker process "
                                    "that is killed when a mail goes over: that mail is quarantined with the "
                                    "reason 'over budget' and the other mails go on.",
                                    check=lambda v: None if v > 0 else "must be > 0"),
            "max_sessions": Key(int, 100, "SMTP/LMTP: most concurrent sessions over all listeners; more are "
                                "answered 421 and closed.", check=_positive),
            "max_recipients": Key(int, 100, "SMTP/LMTP: most recipients per mail; more get 452.", check=_positive),
            "session_idle_seconds": Key(int, 300, "SMTP/LMTP: close a session when the client sends nothing for "
                                        "this long (also inside DATA).", check=_positive),
            "session_max_seconds": Key(int, 1800, "SMTP/LMTP: close a session that lasts longer than this "
                                       "(slow clients).", check=_positive),
            "max_sessions_per_client": Key(int, 20, "SMTP/LMTP: most concurrent sessions from one client IP address "
                                           "(Postfix: smtpd_client_connection_count_limit); more are answered 421 "
                                           "and closed, other clients are not affected. The local MTA delivering by "
                                           "LMTP needs as many as its concurrency for this destination (Postfix: "
                                           "20 by default), or list it in client_limit_exceptions. Unix-socket "
                                           "clients are not counted.", check=_positive),
            "client_limit_exceptions": Key(list, [], "SMTP/LMTP: client IP addresses or networks (e.g. "
                                           "\"10.0.0.0/8\") that max_sessions_per_client does not apply to.",
                                           item_type=str, check=_networks),
            "stress_threshold": Key(float, 0.8, "SMTP/LMTP: when this share of max_sessions is in use, the service "
                                    "is under stress (Postfix: all smtpd processes busy): idle sessions are cut "
                                    "after stress_idle_seconds instead of session_idle_seconds.",
                                    check=lambda v: None if 0 < v <= 1 else "must be > 0 and <= 1"),
            "stress_idle_seconds": Key(int, 10, "SMTP/LMTP under stress: close a session when the client sends "
                                       "nothing for this long (Postfix uses 10 s).", check=_positive),
            "free_space_factor": Key(float, 1.5, "SMTP/LMTP MAIL FROM is answered '452 4.3.1' (try later) and IMAP "
                                     "polling and `ingest` pause while the free space in gateway.data_dir is below "
                                     "this many times max_message_size; both go on by themselves when space is "
                                     "back.", check=_non_negative),
            "max_watchers_per_mail": Key(int, 10, "Most watchers one mail adds to a ticket (from its Cc); the "
                                         "addresses past the bound are recorded in the decision trace and not "
                                         "added.", check=_non_negative),
            "mails_per_sender_per_hour": Key(int, 50, "Most tickets and comments made from one sender address in an "
                                             "hour (by the time the mails arrived); further mail from that address "
                                             "is quarantined with the reason 'flood' (kept, listed, replayable), "
                                             "never answered. Staff and flood_exempt are exempt.", check=_positive),
            "flood_exempt": Key(list, [], "Sender addresses ('monitor@example.com') or domains ('example.com') that "
                                "mails_per_sender_per_hour does not apply to.", item_type=str, check=_addr_or_domain),
        },
    ),
    "authentication": Section(
        "Sender authentication: a mail whose From domain fails DMARC (or, for a domain without a DMARC record, "
        "has no aligned SPF or DKIM pass and an aligned fail) never acts as its sender: it is quarantined with "
        "the reason 'sender authentication failed' (an admin may replay it). A mail with no result at all is "
        "'unverified': it may open a ticket, and the people it Cc's become watchers (up to "
        "limits.max_watchers_per_mail) but are not mailed until they write themselves or staff adds them.",
        {
            "trusted_authserv_ids": Key(list, [], "Authentication-Results headers (RFC 8601) are believed only from "
                                        "these authserv-ids (your MTA's, e.g. \"mx.example.com\") and only above "
                                        "the topmost Received field (where the receiving MTA adds them); for mail "
                                        "received on the SMTP/LMTP listeners also only from trusted_relays. Every "
                                        "other one is ignored, and said so in the decision trace.", item_type=str),
            "trusted_relays": Key(list, ["127.0.0.1", "::1"], "IP addresses or networks of the MTAs that hand mail "
                                  "to the SMTP/LMTP listeners. Their Authentication-Results are believed; the "
                                  "gateway's own SPF check is skipped for their mail (their IP is not the "
                                  "sender's). Unix-socket clients count as trusted relays.", item_type=str,
                                  check=_networks),
            "verify": Key(bool, False, "Where no trusted Authentication-Results exist, verify DKIM, SPF (SMTP/LMTP "
                          "and `ingest --client-ip`: the client IP, HELO and MAIL FROM) and DMARC when the mail "
                          "arrives (SMTP, LMTP, IMAP, `ingest` from stdin; not for files and archives), and store "
                          "the result with the mail."),
            "dns_servers": Key(list, [], "DNS resolvers for verify, as \"IP\" or \"IP:port\" (\"[IPv6]:port\"). "
                               "Empty: the system's (/etc/resolv.conf).", item_type=str, check=_dns_servers),
            "dns_timeout_seconds": Key(float, 5.0, "Most time the DNS lookups of one mail's verification may take "
                                       "in all; what is not answered by then counts as a temporary error (no "
                                       "result, not a failure).", check=_positive),
        },
    ),
    "listen": Section(
        "SMTP and LMTP listeners ([[listen]], any number). Without any [[listen]] table the service listens on "
        "127.0.0.1:2525 (SMTP) and 127.0.0.1:2424 (LMTP).",
        {
            "protocol": Key(str, "smtp", "What the listener speaks.", choices=("smtp", "lmtp")),
            "host": Key(str, "127.0.0.1", "Address to bind ('::' or '0.0.0.0' for all)."),
            "port": Key(int, None, "TCP port; 0 takes any free port (start-up logs the one it got). Left out: "
                        "the protocol's default (SMTP 2525, LMTP 2424).", check=_port),
            "path": Key(str, "", "Unix socket path instead of host and port (e.g. for Postfix LMTP). Under the "
                        "systemd unit: /run/ticket-gateway/lmtp.sock (the only writable place for it besides the data "
                        "directory) with socket_mode 0666, so that Postfix's lmtp client can connect."),
            "socket_mode": Key(str, "0660", "Permissions of the Unix socket (octal).",
                               check=lambda v: None if re.fullmatch(r"0?[0-7]{3}", v) else "an octal mode like 0660"),
            "tls_cert": Key(str, "", "PEM certificate (chain) file: offer STARTTLS. Empty: no STARTTLS."),
            "tls_key": Key(str, "", "PEM private key file for tls_cert."),
            "require_starttls": Key(bool, False, "Refuse mail before STARTTLS (needs tls_cert and tls_key)."),
        },
        many=True,
        example_items=({"protocol": "smtp", "host": "127.0.0.1", "port": 2525},
                       {"protocol": "lmtp", "host": "127.0.0.1", "port": 2424}),
    ),
    "routes": Section(
        "Defaults for new tickets by recipient address ([[routes]], any number). The first route whose address "
        "matches a recipient of the mail (exactly, or its +token sub-addresses) applies.",
        {
            "address": Key(str, None, "Required: a gateway address.", check=lambda v: _addresses([v])),
            "group": Key(str, "", "Group (queue) new tickets are assigned to. Empty: none."),
            "priority": Key(str, "medium", "Priority of new tickets.", choices=("low", "medium", "high", "critical")),
            "type": Key(str, "incident", "Type of new tickets.",
                        choices=("incident", "problem", "service_request", "change_request")),
        },
        many=True,
        example_items=({"address": "support@localhost", "group": "first-level", "priority": "medium",
                        "type": "incident"},),
    ),
    "serve": Section(
        "The long-running service (`ticket-gateway serve`).",
        {
            "hostname": Key(str, "", "Name in the SMTP/LMTP greeting ('220 <hostname> ESMTP': no software name or "
                            "version is shown) and in EHLO/LHLO replies. Empty: this host's name."),
            "workers": Key(int, 1, "Threads that turn stored mail into tickets and comments.", check=_positive),
            "defer_seconds": Key(int, 30, "In a burst of arriving mail (see thread_share), threading of a stored "
                                 "mail waits at most this long; then it takes every other turn with the stores. "
                                 "0: thread at once, always.",
                                 check=_non_negative),
            "thread_share": Key(float, 0.75, "SQLite (one writer): threading (turning stored mail into tickets) "
                                "takes every other turn with storing arriving mail as long as keeping pace needs "
                                "at most this share of the database's write lock: mail/s x (what a "
                                "threading transaction costs once / 16 mails + what it costs per mail), "
                                "measured as serve runs. In a burst faster than that (until it falls below 3/4 "
                                "of it), arriving mail goes first (senders get their 250 sooner) and threading "
                                "catches up after it, waiting at most defer_seconds per mail. 0: never while "
                                "mail arrives.",
                                check=lambda v: None if 0 <= v <= 1 else "must be between 0 and 1"),
            "pending_sweep_seconds": Key(int, 60, "How often stored mail that was not threaded yet (after an "
                                         "outage or a crash) is threaded again.", check=_positive),
            "shutdown_grace_seconds": Key(int, 20, "On SIGTERM: how long in-flight sessions may take to finish "
                                          "(the process exits within this plus a few seconds).",
                                          check=lambda v: None if 1 <= v <= 25 else "must be 1-25"),
        },
    ),
    "outbound": Section(
        "Outgoing mail (acknowledgements and notifications): who it comes from and how it leaves. Every mail "
        "is first written to the outbox table in the same transaction as the change that caused it, then "
        "delivered by the service (or `ticket-gateway outbox flush`) with retries.",
        {
            "enabled": Key(bool, True, "Write notifications to the outbox at all."),
            "from_address": Key(str, "", "From address of every mail. Empty: the first of gateway.addresses. "
                                "Replies go to a signed sub-address of it (support+<token>@...), so it should be "
                                "one of gateway.addresses.", check=lambda v: _addresses([v]) if v else None),
            "from_name": Key(str, "Support", "Display name in From."),
            "domain": Key(str, "", "Domain of the Message-IDs of outgoing mail. Empty: the domain of from_address.",
                          check=lambda v: None if not v or re.fullmatch(r"[A-Za-z0-9.-]+", v)
                          else "a domain name like example.com"),
            "reply_secret": Key(str, "", "Secret for the signed reply addresses (HMAC), at least 24 characters "
                                "(96 bits or more; e.g. `openssl rand -hex 16`). Empty: a random secret is generated "
                                "on first start and kept in <gateway.data_dir>/reply-secret (back it up with the "
                                "database: changing it invalidates the reply addresses of mail already sent).",
                                check=lambda v: None if not v or len(v) >= 24 else "must be at least 24 characters"),
            "relay_host": Key(str, "", "SMTP relay (smarthost) that delivers the mail. Empty: no relay; mail is "
                              "written to the Maildir <gateway.data_dir>/outbox-maildir instead (read it to see what "
                              "would have been sent)."),
            "relay_port": Key(int, 587, "Port of the relay.", check=_port),
            "relay_security": Key(str, "starttls", "'starttls' (submission, port 587), 'tls' (implicit TLS, port "
                                  "465) or 'none' (plain, e.g. a local MTA on port 25).",
                                  choices=("starttls", "tls", "none")),
            "relay_user": Key(str, "", "Login name at the relay. Empty: no login."),
            "relay_password_file": Key(str, "", "File holding the relay password (first line)."),
            "relay_timeout_seconds": Key(int, 30, "Network timeout talking to the relay.", check=_positive),
            "retry_base_seconds": Key(int, 60, "First retry this long after a temporary failure; doubled each time.",
                                      check=_positive),
            "retry_max_seconds": Key(int, 3600, "Longest wait between two tries.", check=_positive),
            "give_up_hours": Key(int, 48, "A mail still not accepted this long after it was queued is marked "
                                 "failed.", check=_positive),
            "deliver_seconds": Key(int, 5, "`serve`: how often the outbox is checked for mail that is due.",
                                   check=_positive),
            "batch_size": Key(int, 200, "Most mails claimed by one delivery round.", check=_positive),
            "lease_seconds": Key(int, 300, "A claimed mail not confirmed within this time (crashed sender) is "
                                 "delivered again, with the same Message-ID.", check=_positive),
            "unsubscribe_url": Key(str, "", "Public base URL of the HTTP listener ([http]), e.g. "
                                   "https://support.example.com: notifications to watchers then carry an RFC 8058 "
                                   "one-click List-Unsubscribe URL (<base>/api/v1/unsubscribe/<signed token>) "
                                   "beside the signed mailto address they always carry. Empty: mailto only.",
                                   check=lambda v: None if not v or re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", v)
                                   else "an http:// or https:// URL without query"),
            "dkim_key_file": Key(str, "", "PEM file with the RSA (or Ed25519) private key to sign outgoing mail "
                                 "with DKIM, for relays that do not sign. Empty: no signature."),
            "dkim_selector": Key(str, "", "DKIM selector: the public key is published as TXT at "
                                 "<selector>._domainkey.<dkim_domain>. Required with dkim_key_file.",
                                 check=lambda v: None if not v or re.fullmatch(r"[A-Za-z0-9._-]+", v)
                                 else "letters, digits, dots, dashes"),
            "dkim_domain": Key(str, "", "DKIM signing domain (d=). Empty: the domain of from_address.",
                               check=lambda v: None if not v or re.fullmatch(r"[A-Za-z0-9.-]+", v)
                               else "a domain name like example.com"),
        },
    ),
    "notifications": Section(
        "Which events send mail, to whom, with which templates, and the caps that stop mail loops.",
        {
            "ticket_created": Key(bool, True, "Acknowledge a new ticket to its reporter (never to auto-replies, "
                                  "bounces, bulk mail, no-reply senders or the gateway itself)."),
            "staff_new_ticket": Key(bool, True, "Tell staff about a new ticket (all staff contacts)."),
            "comment": Key(bool, True, "Send public comments to the reporter, watchers and assignee (never to "
                           "their author)."),
            "internal_note": Key(bool, True, "Send internal notes to the staff concerned (assignee, staff watchers)."),
            "status": Key(bool, True, "Tell the reporter and watchers when a ticket is resolved, closed or pending."),
            "assignment": Key(bool, True, "Tell the new assignee."),
            "rejected": Key(bool, True, "Send a polite notice to a rejected unknown sender (at most one per sender "
                            "per day)."),
            "cc_watchers": Key(bool, True, "Show the reporter in To and the watchers in Cc of every copy (each "
                               "recipient still gets a copy of their own with a personal reply address). false: "
                               "each copy names its recipient only."),
            "template_dir": Key(str, "", "Directory with templates overriding the built-in ones (same file names, "
                                "e.g. comment.txt.j2). Empty: built-in templates only."),
            "max_per_ticket_10min": Key(int, 10, "Most notification rounds caused by inbound mail per ticket in "
                                        "10 minutes; more are suppressed (loop guard).", check=_positive),
            "max_per_recipient_day": Key(int, 40, "Most mails caused by inbound mail to one address in 24 hours; "
                                         "more are suppressed (loop guard). Mail to staff is not counted "
                                         "(staff.max_notices_per_ticket_hour bounds it).", check=_positive),
            "commands": Key(bool, True, "Confirm a staff member's mail commands to them: one automatic mail "
                            "listing what changed and what was refused, and why."),
        },
    ),
    "imap": Section(
        "IMAP mailboxes the gateway fetches mail from ([[imap]], any number). Each new message is stored and "
        "threaded, then moved to processed_folder (quarantine_folder when quarantined); the service waits "
        "with IDLE where the server has it, else polls. `ticket-gateway imap poll` drains them once.",
        {
            "name": Key(str, None, "Required: a short unique name for the account (logs, state, --account).",
                        check=lambda v: None if re.fullmatch(r"[A-Za-z0-9._-]{1,100}", v)
                        else "letters, digits, . _ - only (1-100)"),
            "host": Key(str, None, "Required: the IMAP server's host name."),
            "port": Key(int, 0, "TCP port. 0: 993 for security 'tls', else 143.", check=_port),
            "security": Key(str, "tls", "Connection security: 'tls' (implicit TLS, port 993), 'starttls' (STARTTLS "
                            "on port 143, required: no login without it), 'none' (plain text; loopback and tests "
                            "only). The server's certificate and host name are verified; a certificate that is not "
                            "accepted stops this account's poller with an error (shown by /healthz and `imap "
                            "poll`), it is not retried.", choices=("tls", "starttls", "none")),
            "ca_file": Key(str, "", "PEM file with the CA certificate(s) that signed the server's certificate (a "
                           "private CA; relative to the config file). Only these CAs are trusted then. Empty: the "
                           "system's CAs."),
            "user": Key(str, None, "Required: the login name."),
            "password": Key(str, "", "The password (prefer password_file)."),
            "password_file": Key(str, "", "File whose first line is the password (relative to the config file)."),
            "address": Key(str, "", "The gateway address this mailbox receives mail for (recorded as the "
                           "envelope recipient; selects routing). Empty: none.",
                           check=lambda v: _addresses([v]) if v else None),
            "folder": Key(str, "INBOX", "Folder to fetch from."),
            "processed_folder": Key(str, "Processed", "Where fetched mail is moved after it was stored (created "
                                    "when missing). Empty: fetched mail is deleted from the server."),
            "quarantine_folder": Key(str, "Quarantine", "Where quarantined mail (and mail over "
                                     "limits.max_message_size) is moved (created when missing). Empty: "
                                     "processed_folder."),
            "poll_seconds": Key(int, 60, "Servers without IDLE: how often the folder is checked.", check=_positive),
            "idle_seconds": Key(int, 300, "Servers with IDLE: re-issue IDLE this often (servers drop idle "
                                "clients after 30 minutes; NAT boxes sooner).", check=_positive),
            "batch_size": Key(int, 50, "Messages fetched per FETCH command.", check=_positive),
            "timeout_seconds": Key(int, 60, "Network timeout for connecting and for every read.", check=_positive),
            "lease_seconds": Key(int, 30, "Instances sharing one database poll a mailbox one at a time: the poller "
                                 "holds a lease in the database for this long and renews it every third of it; "
                                 "when its instance dies another takes over within about 1.3 times this (40 s "
                                 "by default). Instances must name a shared mailbox alike (the lease is per "
                                 "account name).", check=lambda v: None if v >= 2 else "must be >= 2"),
        },
        many=True,
        example_items=({"name": "support", "host": "imap.example.com", "security": "tls",
                        "user": "support@example.com", "password_file": "/etc/ticket-gateway/imap-password",
                        "address": "support@example.com", "folder": "INBOX", "processed_folder": "Processed",
                        "quarantine_folder": "Quarantine"},),
    ),
    "sla": Section(
        "Service levels: response and resolution deadlines, pending reminders and escalation mails. Policies "
        "live in the database (`ticket-gateway sla policies add|list|remove`); `policies` below seeds it.",
        {
            "enabled": Key(bool, True, "Stamp SLA deadlines on tickets and run the SLA sweep."),
            "sweep_seconds": Key(int, 60, "How often `serve` sweeps for due escalations and pending reminders "
                                 "(`ticket-gateway sla tick` sweeps once by hand).", check=_positive),
            "at_risk_minutes": Key(int, 60, "A running clock this close to its deadline shows as at risk (amber) "
                                   "even before its warning threshold.", check=_positive),
            "batch_size": Key(int, 500, "Tickets handled per sweep transaction.", check=_positive),
            "group_addresses": Key(dict, {}, "Where mail for a group goes (pending reminders when the ticket has "
                                   "no assignee, escalations): group name -> address, e.g. "
                                   "{ first-level = \"l1@example.com\" }.", check=lambda v: _group_addresses(v)),
            "policies": Key(list, [], "Policies seeded into the database on first use, in order (a policy whose "
                            "name the database knows, even a removed one, is left alone). Each: { name, response, "
                            "resolution (minutes), priorities, types, organisations, groups (lists; empty: all), "
                            "warn_at (percent used, default 80), warn_before (minutes), escalate_to (addresses), "
                            "calendar (\"Europe/Berlin mon-fri 09:00-17:00\"; none: around the clock), holidays "
                            "(dates), notify_assignee, notify_group, active }.", item_type=dict,
                            check=lambda v: _sla_policies(v)),
        },
    ),
    "http": Section(
        "The HTTP listener of `serve`: the JSON API under /api/v1 (Bearer tokens: `ticket-gateway tokens "
        "create`), GET /healthz and GET /metrics (Prometheus). It runs on the service's own event loop; a slow "
        "or hostile HTTP client never holds up mail.",
        {
            "listen": Key(str, "127.0.0.1:8025", "host:port to listen on ('[::1]:8025' for IPv6; port 0: any "
                          "free port, logged at start). Empty: no HTTP listener. Anything but loopback should sit "
                          "behind a TLS-terminating reverse proxy.", check=lambda v: _http_listen(v)),
            "metrics_token": Key(bool, False, "GET /metrics needs a token (any scope) like the API. Else it is "
                                 "open to whoever reaches the listener (it shows counts, never addresses)."),
            "max_body_bytes": Key(int, 1024 * 1024, "Largest JSON request body, in bytes (more: 413).",
                                  check=_positive),
            "max_upload_bytes": Key(int, 25 * 1024 * 1024, "Largest multipart request (a comment with its "
                                    "attachments), in bytes (more: 413).", check=_positive),
            "max_connections": Key(int, 64, "Most concurrent HTTP connections; more are answered 503 and "
                                   "closed.", check=_positive),
            "request_timeout_seconds": Key(int, 30, "A request's head and body must arrive within this many "
                                           "seconds (slow clients are cut off: 408).", check=_positive),
            "auth_failures_per_minute": Key(int, 10, "Failed token attempts allowed per client address per "
                                            "minute; more are answered 429 until the minute has passed.",
                                            check=_positive),
        },
    ),
    "backend": Section(
        "Where tickets live: 'builtin' keeps them in the gateway's own store; 'jira' (Jira Service Management), "
        "'zammad' or 'smax' (OpenText SMAX) brokers them to that service desk. The gateway's store stays its "
        "memory (threading, Message-IDs, reply tokens, quarantine); every change is queued for the desk in the "
        "same transaction and delivered with retries (`ticket-gateway backend flush`), and the desk is polled "
        "for its changes. `ticket-gateway backend check` verifies the credentials and every mapped id.",
        {
            "kind": Key(str, "builtin", "The desk.", choices=("builtin", "jira", "zammad", "smax")),
            "name": Key(str, "", "Name of this backend in the webhook path /api/v1/backends/<name>/webhook and in "
                        "the queue. Empty: the kind.", check=lambda v: None if not v or re.fullmatch(
                            r"[a-z0-9_-]{1,50}", v) else "lower-case letters, digits, _ - only (1-50)"),
            "url": Key(str, "", "Base URL of the desk, e.g. https://example.atlassian.net, "
                       "https://zammad.example.com, https://smax.example.com.",
                       check=lambda v: None if not v or re.match(r"https?://[^/\s]+", v)
                       else "an http(s):// URL"),
            "user": Key(str, "", "Jira: the account's email (Cloud API token) -- empty: token_file holds a personal "
                        "access token (Data Center, sent as Bearer). SMAX: the integration user's login. Zammad: "
                        "unused."),
            "token_file": Key(str, "", "File whose first line is the secret: Jira API token or personal access "
                              "token, Zammad access token, SMAX password (relative to the config file). Never "
                              "logged."),
            "service_desk_id": Key(str, "", "Jira: the service desk id (servicedeskapi/servicedesk)."),
            "tenant_id": Key(str, "", "SMAX: the tenant id."),
            "reference_field": Key(str, "", "Where our reference (the idempotency key of a create) goes. Empty: "
                                   "the desk's default -- Jira 'labels' (the request type must have the Labels "
                                   "field; or 'description': a line in the description), Zammad 'tags', SMAX "
                                   "'ExternalProcessReference'."),
            "poll_seconds": Key(int, 60, "`serve`: how often the desk is asked for tickets updated since the last "
                                "poll (a webhook makes it sooner).", check=_positive),
            "deliver_seconds": Key(int, 5, "`serve`: how often queued pushes are checked.", check=_positive),
            "timeout_seconds": Key(int, 30, "Timeout of every request to the desk.", check=_positive),
            "batch_size": Key(int, 50, "Most pushes claimed by one delivery round.", check=_positive),
            "retry_base_seconds": Key(int, 30, "First retry this long after a temporary failure (desk down, "
                                      "5xx); doubled each time.", check=_positive),
            "retry_max_seconds": Key(int, 900, "Longest wait between two tries. Pushes are never dropped for "
                                     "being late: a desk down for a day gets them all when it is back.",
                                     check=_positive),
            "lease_seconds": Key(int, 300, "A claimed push not confirmed within this time (crashed process) is "
                                 "tried again; a create looks for the request it may have made first.",
                                 check=_positive),
            "max_attachment_bytes": Key(int, 10 * 1024 * 1024, "Largest file sent to the desk (set it to the "
                                        "desk's own limit). A larger file stays in the gateway and a note on the "
                                        "ticket says so.", check=_positive),
            "notifications": Key(str, "gateway", "Who mails the customer about comments and status changes made "
                                 "in the desk: 'gateway' (its notifications, threaded, with reply addresses; turn "
                                 "the desk's own customer mails off) or 'backend' (the desk does).",
                                 choices=("gateway", "backend")),
            "webhook_secret_file": Key(str, "", "File whose first line is the webhook secret (the desk signs its "
                                       "webhooks with it: X-Hub-Signature, HMAC-SHA256 for Jira and SMAX, "
                                       "HMAC-SHA1 for Zammad). Empty: webhooks are refused; polling only."),
            "request_types": Key(dict, {}, "Local ticket type -> Jira request type id / Zammad group / SMAX "
                                 "category id; the key \"*\" is used for types not listed.",
                                 check=lambda v: _mapping(v, TYPES_OR_STAR)),
            "priorities": Key(dict, {}, "Local priority -> Jira priority id / Zammad priority name / SMAX "
                              "priority value. A priority not listed is left to the desk.",
                              check=lambda v: _mapping(v, ("low", "medium", "high", "critical"))),
            "statuses": Key(dict, {}, "Remote status -> local status (open, in_progress, pending, resolved, "
                            "closed). The remote statuses mapped to resolved/closed are the desk's resolved and "
                            "cancelled ones; local status changes are pushed as the first remote status listed "
                            "for them. A remote status not listed is reported, not applied.",
                            check=lambda v: _statuses(v)),
        },
    ),
    "logging": Section(
        "Logs.",
        {
            "level": Key(str, "INFO", "Log level (upper or lower case).", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         normalize=str.upper),
            "file": Key(str, "", "Log file (reopened on SIGHUP). Empty: standard error (journald under systemd)."),
            "format": Key(str, "text", "'text': one readable line per event; 'json': one JSON object per line "
                          "(time, level, logger, message and the event's fields, e.g. mail_id, outcome).",
                          choices=("text", "json")),
        },
    ),
}


@dataclass
class Config:
    """Validated configuration: `cfg.get("gateway", "addresses")` or `cfg.gateway["addresses"]`."""

    values: dict[str, Any]
    source: str = "built-in defaults"
    base_dir: Path = field(default_factory=Path.cwd)
    warnings: list[str] = field(default_factory=list)  # deprecated keys in use: logged at start-up

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError:
            raise AttributeError(name) from None

    # Derived paths -------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        p = Path(os.path.expanduser(self.values["gateway"]["data_dir"]))
        return p if p.is_absolute() else (self.base_dir / p)

    @property
    def database_url(self) -> str:
        url = self.values["database"]["url"]
        return url or f"sqlite:///{self.data_dir / 'gateway.db'}"

    @property
    def attachments_dir(self) -> Path:
        p = self.values["attachments"]["path"]
        if not p:
            return self.data_dir / "attachments"
        path = Path(os.path.expanduser(p))
        return path if path.is_absolute() else self.base_dir / path

    @property
    def gateway_addresses(self) -> tuple[str, ...]:
        return tuple(a.lower() for a in self.values["gateway"]["addresses"])

    def is_gateway_address(self, addr: str | None) -> bool:
        """True for one of our addresses or a +token sub-address of one."""
        if not addr:
            return False
        addr = addr.lower()
        local, _, domain = addr.rpartition("@")
        base = f"{local.split('+', 1)[0]}@{domain}"
        return addr in self.gateway_addresses or base in self.gateway_addresses


def _type_name(t: type | tuple[type, ...]) -> str:
    if isinstance(t, tuple):
        return " or ".join(x.__name__ for x in t)
    return {str: "a string", int: "an integer", bool: "true or false", list: "a list", float: "a number"}.get(
        t, t.__name__)


def _check_value(where: str, key: Key, value: Any) -> Any:
    if key.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, key.type) and not (key.type in (int, float) and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where}: expected {_type_name(key.type)}, got {value!r}")
    if key.item_type is not None:
        for item in value:
            if not isinstance(item, key.item_type):
                raise ConfigError(f"{where}: every item must be {_type_name(key.item_type)}, got {item!r}")
    if key.normalize is not None:
        value = key.normalize(value)
    if key.choices is not None and value not in key.choices:
        raise ConfigError(f"{where}: must be one of {', '.join(map(repr, key.choices))}, got {value!r}")
    if key.check is not None:
        err = key.check(value)
        if err:
            raise ConfigError(f"{where}: {err}")
    return value


def _validate_table(where: str, section: Section, table: Any, errors: list[str]) -> dict[str, Any]:
    """The table's values (defaults filled in); every problem is added to `errors` (a bad value leaves the
    key at its default, so that the other keys are still checked)."""
    out: dict[str, Any] = {name: _copy(key.default) for name, key in section.keys.items()}
    if not isinstance(table, dict):
        errors.append(f"{where}: expected a table")
        return out
    known = ", ".join(section.keys)
    for name in sorted(set(table) - set(section.keys)):
        errors.append(f"{where}.{name}: unknown key (known keys: {known})")
    for name, key in section.keys.items():
        if name in table:
            try:
                out[name] = _check_value(f"{where}.{name}", key, table[name])
            except ConfigError as e:
                errors.append(str(e))
        elif key.default is None and key.doc.startswith("Required"):
            errors.append(f"{where}.{name}: required key is missing")
    return out


def _copy(v: Any) -> Any:
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def validate(data: Mapping[str, Any], *, source: str = "built-in defaults", base_dir: Path | None = None) -> Config:
    """The validated config; a ConfigError lists every problem found (`.errors`), the first in its message's
    first line."""
    errors: list[str] = []
    for name in sorted(set(data) - set(SCHEMA)):
        errors.append(f"{name}: unknown section (known sections: {', '.join(SCHEMA)})")
    values: dict[str, Any] = {}
    for name, section in SCHEMA.items():
        raw = data.get(name)
        if section.many:
            values[name] = []
            if raw is None:
                continue
            if not isinstance(raw, list):
                errors.append(f"{name}: expected a list of tables ([[{name}]])")
                continue
            values[name] = [_validate_table(f"{name}[{i}]", section, t, errors) for i, t in enumerate(raw)]
        else:
            values[name] = _validate_table(name, section, raw if raw is not None else {}, errors)
    config = Config(values=values, source=source, base_dir=base_dir or Path.cwd())
    errors += _cross_checks(config, data)
    if errors:
        raise ConfigError("\n".join(errors), errors)
    if config.values["gateway"]["staff_comments_internal"]:
        config.warnings.append(
            "gateway.staff_comments_internal is deprecated: every staff reply by mail is an internal note, so "
            "customers get no answer by mail; remove it and mark single mails with /internal or the note address "
            "(staff.note_subaddress)")
    return config


def _cross_checks(config: Config, data: Mapping[str, Any]) -> list[str]:
    """Rules between keys: a route's address must be one of gateway.addresses (or a sub-address of one)."""
    errors = []
    for i, route in enumerate(config.values["routes"]):
        addr = route.get("address")
        if isinstance(addr, str) and _ADDR.match(addr) and not config.is_gateway_address(addr):
            errors.append(f"routes[{i}].address: {addr!r} is not one of gateway.addresses "
                          f"({', '.join(config.gateway_addresses)}): no mail would ever match it")
    ob = config.values["outbound"]
    if bool(ob["dkim_key_file"]) != bool(ob["dkim_selector"]):
        errors.append("outbound.dkim_key_file and outbound.dkim_selector: set both (DKIM signing) or neither")
    names = [g.get("name") for g in config.values["groups"]]
    for i, name in enumerate(names):
        if isinstance(name, str) and name in names[:i]:
            errors.append(f"groups[{i}].name: group {name!r} is defined twice")
    return errors


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """--config FILE, else $TICKET_GATEWAY_CONFIG, else built-in defaults."""
    if path is None:
        path = os.environ.get(ENV_VAR) or None
    if path is None:
        return validate({})
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return validate(data, source=str(p), base_dir=p.resolve().parent)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return str(v)


def _wrap(text: str, prefix: str = "# ") -> list[str]:
    import textwrap

    return [prefix + line for line in textwrap.wrap(text, 100 - len(prefix))]


def example_toml() -> str:
    """The documented example config: every key, its default and what it does."""
    out = ["# ticket-gateway configuration. Every key is shown with its default value.",
           "# Generated from gateway/config.py (`ticket-gateway check-config --example`); keep them in step.",
           "# Start the gateway with --config FILE or TICKET_GATEWAY_CONFIG=FILE; an unknown key or a bad",
           "# value stops start-up with a message that names it.", ""]
    for name, section in SCHEMA.items():
        out += _wrap(section.doc)
        items = section.example_items if section.many else ({},)
        for item in items:
            out.append(f"[[{name}]]" if section.many else f"[{name}]")
            for kname, key in section.keys.items():
                out += _wrap(key.doc + (f" One of: {', '.join(map(str, key.choices))}." if key.choices else ""))
                value = item.get(kname, key.default)
                line = f"{kname} = {_toml_value(value)}"
                out.append(line if (kname in item or not section.many) else "# " + line)
            out.append("")
    return "\n".join(out).rstrip() + "\n"

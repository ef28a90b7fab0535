"""Sender authentication (issue 12): is the From domain's owner behind this mail?

`Authenticator.check(raw, envelope)` runs when a mail arrives (the SMTP/LMTP session after DATA, the IMAP
poller before it stores, `ingest` from stdin), outside any database transaction, and its result is stored
with the mail (`InboundMail.auth`): a replay, even much later, decides on what was found on arrival. It
believes trusted Authentication-Results (gateway.auth.headers); where there are none and
`authentication.verify` is on, it verifies DKIM, SPF and DMARC itself (gateway.auth.verify). The verdict
(gateway.auth.policy) is what the pipeline's `authenticate` handler acts on.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.auth.headers import from_domain, header_fields, trusted_results
from gateway.auth.policy import FAIL, NONE, PASS, AuthResult, evaluate
from gateway.config import Config, dns_server

if TYPE_CHECKING:
    from gateway.envelope import Envelope

LIVE = ("smtp", "lmtp", "imap", "stdin", "pipe")   # sources verified on arrival (not files and archives)
SESSIONS = ("smtp", "lmtp")                 # sources whose client address we know from the session
REASON = "sender authentication failed"


class Authenticator:
    def __init__(self, config: Config) -> None:
        a = config.values["authentication"]
        self.trusted_ids = tuple(i.lower() for i in a["trusted_authserv_ids"])
        self.relays = tuple(ipaddress.ip_network(n, strict=False) for n in a["trusted_relays"])
        self.verify = bool(a["verify"])
        self.servers = [dns_server(s) for s in a["dns_servers"]]
        self.budget = float(a["dns_timeout_seconds"])

    @property
    def active(self) -> bool:
        """Is there anything to check on arrival (trusted headers to read, or verification)?"""
        return bool(self.trusted_ids) or self.verify

    def is_relay(self, client_ip: str | None) -> bool:
        """An SMTP/LMTP client that is one of our MTAs (a Unix-socket client, with no IP, is)."""
        if not client_ip:
            return True
        try:
            ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self.relays)

    def check(self, raw: bytes, envelope: Envelope, *, verify: bool | None = None) -> AuthResult:
        """The authentication of a mail as it arrives. verify=False: believe trusted headers only (no DNS)."""
        fields = header_fields(raw)
        session = envelope.source in SESSIONS
        relay = self.is_relay(envelope.client_ip) if session else True
        trusted = trusted_results(fields, self.trusted_ids, relay_trusted=relay)
        result = AuthResult(from_domain=from_domain(fields), notes=list(trusted.notes))
        if trusted.found:
            result.by = "trusted " + ", ".join(dict.fromkeys(trusted.ids))
            return evaluate(result, trusted.spf, trusted.dkim, dmarc=trusted.dmarc,
                            dmarc_policy=trusted.dmarc_policy)
        if not (self.verify if verify is None else verify):
            return result
        if envelope.source not in LIVE:
            result.notes.append(f"not verified: an import ({envelope.source}), not a mail arriving now")
            return result
        return self._verify(raw, envelope, result, spf_ip=envelope.client_ip if not (session and relay) else None)

    def _verify(self, raw: bytes, envelope: Envelope, result: AuthResult, spf_ip: str | None) -> AuthResult:
        from gateway.auth.verify import DnsTempError, Lookup, check_dkim, check_spf, dmarc_record

        result.by = "gateway"
        lookup = Lookup(self.servers, self.budget)
        dkim = check_dkim(raw, lookup)
        spf = None
        if spf_ip:
            spf = check_spf(lookup, spf_ip, envelope.mail_from, envelope.client_helo)
        else:
            result.notes.append("SPF not checked: " + ("the client is a trusted relay" if envelope.client_ip
                                                      else "no client IP known"))
        record = None
        known = False
        if result.from_domain:
            try:
                record = dmarc_record(lookup, result.from_domain)
                known = True
            except DnsTempError as e:
                result.notes.append(f"DMARC record lookup failed: {e}")
        evaluate(result, spf, dkim, record=record, record_known=known)
        if known and record is None:
            result.notes.append(f"{result.from_domain} publishes no DMARC record")
        result.notes.append(f"{lookup.queries} DNS queries")
        return result

    def envelope(self, raw: bytes, envelope: Envelope) -> Envelope:
        """The envelope with the authentication found on arrival (never raises: a failure to check is 'none')."""
        try:
            found = self.check(raw, envelope)
        except Exception as e:  # noqa: BLE001 -- checking must never lose a mail
            found = AuthResult(notes=[f"authentication not checked: {type(e).__name__}: {e}"[:300]])
        return replace(envelope, auth=found.as_dict())


def stored(auth: dict[str, Any] | None) -> AuthResult | None:
    return AuthResult.from_dict(auth) if auth else None


__all__ = ["FAIL", "NONE", "PASS", "REASON", "AuthResult", "Authenticator", "stored"]

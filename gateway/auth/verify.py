"""Verification by the gateway itself: DKIM (dkimpy), SPF (pyspf) and the DMARC record lookup, all through
one DNS resolver (dnspython) that the configuration names, with one time budget for all lookups of a mail.

Bounded: at most MAX_SIGNATURES DKIM signatures are verified, SPF keeps RFC 7208's lookup limits, DMARC
looks up at most two names; a lookup left unanswered when the budget is spent is a temporary error (no
result, never a failure).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from gateway.auth.policy import DmarcRecord, Method, org_domain

MAX_SIGNATURES = 5


class DnsTempError(Exception):
    """No answer within the budget (or the resolver failed): a temporary error."""


class Lookup:
    """DNS lookups for one mail, sharing one deadline."""

    def __init__(self, servers: Sequence[tuple[str, int]], budget: float) -> None:
        if servers:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [dns.nameserver.Do53Nameserver(ip, port) for ip, port in servers]
        else:
            try:
                self.resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                self.resolver = dns.resolver.Resolver(configure=False)
                self.resolver.nameservers = ["127.0.0.1"]
        self.resolver.cache = None
        self.deadline = time.monotonic() + budget
        self.queries = 0

    def resolve(self, name: str, qtype: str) -> list[Any]:
        """The records (dnspython rdata), [] for NXDOMAIN/no data; raises DnsTempError."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise DnsTempError(f"DNS budget spent before {qtype} {name}")
        self.queries += 1
        try:
            answer = self.resolver.resolve(name, qtype, lifetime=left, raise_on_no_answer=False, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            raise DnsTempError(f"{qtype} {name}: {type(e).__name__}") from e
        except dns.exception.DNSException as e:
            raise DnsTempError(f"{qtype} {name}: {type(e).__name__}: {e}") from e
        return list(answer.rrset or [])

    def txt(self, name: str) -> list[bytes]:
        return [b"".join(r.strings) for r in self.resolve(name, "TXT")]


# DKIM -----------------------------------------------------------------------------------------------------
def check_dkim(raw: bytes, lookup: Lookup) -> list[Method]:
    """Each DKIM-Signature (the first MAX_SIGNATURES): pass, fail, temperror or permerror, with its d=."""
    import dkim

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            found = lookup.txt(name.decode("ascii").rstrip("."))
        except UnicodeDecodeError:
            return None
        return found[0] if found else None

    try:
        d = dkim.DKIM(raw, minkey=1024)
        n = sum(1 for k, _ in d.headers if k.lower() == b"dkim-signature")
    except Exception:  # noqa: BLE001 -- a mail dkimpy cannot parse has no verifiable signature
        return []
    out = []
    for idx in range(min(n, MAX_SIGNATURES)):
        domain = _signature_domain(d, idx)
        try:
            ok = d.verify(idx=idx, dnsfunc=dnsfunc)
            out.append(Method("pass" if ok else "fail", domain))
        except DnsTempError:
            out.append(Method("temperror", domain))
        except dkim.KeyFormatError:
            out.append(Method("permerror", domain))
        except Exception:  # noqa: BLE001 -- dkimpy's validation errors: the signature does not verify
            out.append(Method("fail", domain))
    return out


def _signature_domain(d: Any, idx: int) -> str | None:
    from dkim.util import parse_tag_value

    sigs = [v for k, v in d.headers if k.lower() == b"dkim-signature"]
    try:
        tags = parse_tag_value(sigs[idx])
        return str(tags[b"d"].decode("ascii")).strip().lower() or None
    except Exception:  # noqa: BLE001
        return None


# SPF ------------------------------------------------------------------------------------------------------
def check_spf(lookup: Lookup, ip: str, mail_from: str | None, helo: str | None) -> Method:
    """SPF for the MAIL FROM domain (or, for the null sender, the HELO name)."""
    import spf

    helo = (helo or "").strip().strip("[]")
    sender = (mail_from or "").strip().strip("<>")
    if not sender or "@" not in sender:
        if not helo or "." not in helo:
            return Method("none", None)
        sender = f"postmaster@{helo}"
    domain = sender.rpartition("@")[2].lower().rstrip(".")

    class Query(spf.query):
        def dns(self, name: Any, qtype: str, cnames: Any = None, ignore_void: bool = False) -> list[Any]:
            return _spf_dns(self, lookup, name, qtype, ignore_void)

    try:
        q = Query(i=ip, s=sender, h=helo or domain, timeout=max(0.1, lookup.deadline - time.monotonic()))
        result, _, _ = q.check()
    except DnsTempError:
        result = "temperror"
    except Exception:  # noqa: BLE001 -- pyspf raises for bad input (an unusable IP or name)
        result = "permerror"
    return Method(str(result).lower(), domain)


def _spf_dns(q: Any, lookup: Lookup, name: Any, qtype: str, ignore_void: bool) -> list[Any]:
    """pyspf's `query.dns`, through our resolver: the same values (TXT: lists of byte strings; A/AAAA:
    address text; MX: (preference, exchange); PTR: names), cached per query, void lookups counted."""
    import spf

    name = str(name).rstrip(".").lower()
    if not name or any(not 0 < len(label) < 64 for label in name.split(".")):
        return []
    key = (name, qtype)
    if key in q.cache:
        return list(q.cache[key])
    rtype = "TXT" if qtype == "SPF" else qtype
    try:
        records = lookup.resolve(name, rtype)
    except DnsTempError as e:
        raise spf.TempError(f"DNS {e}") from e
    values: list[Any] = []
    for r in records:
        if rtype in ("A", "AAAA"):
            values.append(r.address)
        elif rtype == "MX":
            values.append((r.preference, r.exchange.to_text(omit_final_dot=True)))
        elif rtype == "PTR":
            values.append(r.target.to_text(omit_final_dot=True))
        elif rtype == "TXT":
            values.append(list(r.strings))
    q.cache[key] = values
    if not values and not ignore_void:
        q.void_lookups += 1
        if q.void_lookups > spf.MAX_VOID_LOOKUPS:
            raise spf.PermError(f"Void lookup limit of {spf.MAX_VOID_LOOKUPS} exceeded")
    return list(values)


# DMARC ----------------------------------------------------------------------------------------------------
def dmarc_record(lookup: Lookup, from_domain: str) -> DmarcRecord | None:
    """The DMARC record for the From domain, else its organisational domain's (RFC 7489 6.6.3); None when
    there is none (or several). Raises DnsTempError."""
    from authheaders.dmarc_lookup import DMARCException, answer_to_dict

    org = org_domain(from_domain)
    for domain in dict.fromkeys((from_domain, org)):
        texts = [t.decode("utf-8", "replace") for t in lookup.txt(f"_dmarc.{domain}")]
        records = [t for t in texts if t.strip().lower().startswith("v=dmarc1")]
        if len(records) != 1:
            continue
        try:
            tags = answer_to_dict(records[0])
        except DMARCException:
            continue
        policy = tags.get("p")
        if not policy:
            continue
        if domain != from_domain:
            policy = tags.get("sp", policy)
        return DmarcRecord(domain, policy.strip(), tags.get("adkim", "r")[:1], tags.get("aspf", "r")[:1])
    return None

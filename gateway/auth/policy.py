"""Pure sender-authentication policy: alignment and the verdict, from method results already known.

No DNS and no I/O here (the organisational domain comes from the public suffix list shipped with
authheaders, read once). The verdict is what the pipeline acts on:

* ``pass``  -- DMARC passes, or (no DMARC result) an SPF or DKIM pass aligned with the From domain;
* ``fail``  -- DMARC fails (whatever its p=), or, for a domain without a DMARC record, no aligned pass and
  an aligned failure (SPF ``fail`` for an aligned MAIL FROM, or a DKIM signature of the From domain that
  does not verify): the mail never acts as its sender;
* ``none``  -- nothing either way (no records, temporary errors, no single From domain): "unverified".
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, NONE = "pass", "fail", "none"


@dataclass(frozen=True)
class Method:
    """One SPF or DKIM result: pass, fail, softfail, neutral, none, temperror, permerror, policy."""

    result: str
    domain: str | None = None  # SPF: the MAIL FROM (or HELO) domain; DKIM: the signature's d=


@dataclass(frozen=True)
class DmarcRecord:
    domain: str          # where the record was found (the From domain or its organisational domain)
    policy: str          # p= (sp= where the record is the organisational domain's and From is a subdomain)
    adkim: str = "r"
    aspf: str = "r"


@dataclass
class AuthResult:
    """What is stored with the mail (`InboundMail.auth`) and shown by `mail show` and the trace."""

    verdict: str = NONE
    by: str = "none"                 # 'trusted <authserv-id>' | 'gateway' | 'none'
    from_domain: str | None = None
    aligned: str | None = None       # the domain whose aligned pass authenticated the mail
    dmarc: str = NONE                # pass | fail | none | temperror | permerror
    dmarc_policy: str | None = None
    spf: str = NONE
    spf_domain: str | None = None
    dkim: str = NONE
    dkim_domain: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "by": self.by, "from_domain": self.from_domain, "aligned": self.aligned,
                "dmarc": self.dmarc, "dmarc_policy": self.dmarc_policy, "spf": self.spf,
                "spf_domain": self.spf_domain, "dkim": self.dkim, "dkim_domain": self.dkim_domain,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AuthResult:
        known = {k: d[k] for k in cls().as_dict() if k in d}
        known["notes"] = list(known.get("notes") or [])
        return cls(**known)

    def summary(self) -> str:
        def one(name: str, result: str, domain: str | None) -> str:
            return f"{name}={result}" + (f" ({domain})" if domain else "")

        dmarc = f"dmarc={self.dmarc}" + (f" (p={self.dmarc_policy})" if self.dmarc_policy else "")
        return (f"{self.verdict} by {self.by}: {dmarc}, {one('spf', self.spf, self.spf_domain)}, "
                f"{one('dkim', self.dkim, self.dkim_domain)}"
                + (f"; aligned domain {self.aligned}" if self.aligned else ""))


@functools.lru_cache(maxsize=1)
def _suffix_list() -> Any:
    import importlib.resources

    from publicsuffix2 import PublicSuffixList

    ref = importlib.resources.files("authheaders") / "public_suffix_list.txt"
    with importlib.resources.as_file(ref) as path, open(path, encoding="utf-8") as f:
        return PublicSuffixList(f)


@functools.lru_cache(maxsize=4096)
def org_domain(domain: str) -> str:
    """The organisational domain (RFC 7489 3.2): one label below the public suffix."""
    domain = domain.lower().rstrip(".")
    try:
        found = str(_suffix_list().get_sld(domain) or "")
    except Exception:  # noqa: BLE001 -- a name the list cannot handle is its own organisation
        return domain
    if "." not in found:  # a top-level domain the list does not know: the default rule "*" (one label)
        found = ".".join(domain.split(".")[-2:])
    return found.lower()


def aligned(from_domain: str, other: str | None, mode: str = "r") -> bool:
    if not other:
        return False
    a, b = from_domain.lower().rstrip("."), other.lower().rstrip(".")
    if mode == "s":
        return a == b
    return a == b or org_domain(a) == org_domain(b)


def evaluate(result: AuthResult, spf: Method | None, dkim: Sequence[Method], *, dmarc: str | None = None,
             dmarc_policy: str | None = None, record: DmarcRecord | None = None,
             record_known: bool = False) -> AuthResult:
    """Fill in `result` (from_domain and `by` set by the caller): the method summary, the DMARC result and
    the verdict. `dmarc`: a DMARC result already known (a trusted Authentication-Results header);
    `record`/`record_known`: the DMARC record looked up (record_known with record None: there is none)."""
    fd = result.from_domain
    if spf is not None:
        result.spf, result.spf_domain = spf.result, spf.domain
    if dkim:
        best = next((m for m in dkim if m.result == PASS and fd and aligned(fd, m.domain)),
                    next((m for m in dkim if m.result == PASS), dkim[0]))
        result.dkim, result.dkim_domain = best.result, best.domain
    if not fd:
        result.verdict = NONE
        result.notes.append("no single From domain to authenticate")
        return result
    adkim = record.adkim if record else "r"
    aspf = record.aspf if record else "r"
    dkim_pass = next((m.domain for m in dkim if m.result == PASS and aligned(fd, m.domain, adkim)), None)
    spf_pass = spf.domain if spf is not None and spf.result == PASS and aligned(fd, spf.domain, aspf) else None
    passed = dkim_pass or spf_pass
    if dmarc is None and record is not None:
        dmarc, dmarc_policy = (PASS if passed else FAIL), record.policy
    result.dmarc = dmarc or NONE
    result.dmarc_policy = dmarc_policy
    if dmarc == PASS:
        result.verdict, result.aligned = PASS, passed or fd
    elif dmarc == FAIL:
        result.verdict = FAIL
    elif passed:
        result.verdict, result.aligned = PASS, passed
    elif ((spf is not None and spf.result == FAIL and aligned(fd, spf.domain))
          or any(m.result == FAIL and aligned(fd, m.domain) for m in dkim)):
        result.verdict = FAIL
        why = "no DMARC record" if record_known or dmarc == NONE else "no DMARC result"
        result.notes.append(f"{why}; no aligned pass and an aligned failure")
    else:
        result.verdict = NONE
    return result

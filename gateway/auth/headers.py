"""Pure: what the header of a mail says about its authentication -- the From domain, and the
Authentication-Results fields (RFC 8601) we may believe.

A field is believed only when its authserv-id is one of ours (`trusted_authserv_ids`) and it stands above the
topmost Received field (where the receiving MTA prepends it; anything lower down came with the mail), and,
for mail from an SMTP/LMTP client, only when that client is a trusted relay. Every other field is ignored and
the reason is noted.
"""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.addresses import read_author
from gateway.auth.policy import Method

HEAD_LIMIT = 256 * 1024      # bytes of header looked at
MAX_FIELDS = 2000            # header fields looked at
MAX_RESULTS = 20             # Authentication-Results fields considered
MAX_RESULTS_PER_FIELD = 20   # results read from one field


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields in order (name, unfolded value), at most MAX_FIELDS."""
    end = raw.find(b"\r\n\r\n")
    end2 = raw.find(b"\n\n")
    cut = min([e for e in (end, end2) if e >= 0] or [len(raw)])
    head = raw[: min(cut, HEAD_LIMIT)]
    try:
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
        items = msg.raw_items()
    except Exception:  # noqa: BLE001 -- an unreadable header has nothing to believe
        return []
    out: list[tuple[str, str]] = []
    for name, value in items:
        if len(out) >= MAX_FIELDS:
            break
        out.append((name, str(value).replace("\r", "").replace("\n", "")))
    return out


def from_domain(fields: Iterable[tuple[str, str]]) -> str | None:
    """The domain of the one address in the one From field, lowercased; None when there is not exactly one
    (several From fields or authors are for the address reader to quarantine; nothing to authenticate)."""
    values = [v for k, v in fields if k.lower() == "from"]
    author = read_author(values) if len(values) == 1 else None
    if author is None or author.addr is None or author.ambiguous:
        return None
    domain = author.addr.rpartition("@")[2]
    return domain if domain and not domain.startswith("[") else None


@dataclass
class Trusted:
    """The believed results: per method, from every trusted field above the topmost Received."""

    ids: list[str] = field(default_factory=list)
    dmarc: str | None = None
    dmarc_policy: str | None = None
    spf: Method | None = None
    dkim: list[Method] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        return bool(self.ids)


def _domain_of(value: str | None) -> str | None:
    if not value:
        return None
    return value.rpartition("@")[2].strip().strip("<>").rstrip(".").lower() or None


def trusted_results(fields: list[tuple[str, str]], trusted_ids: Iterable[str], *, relay_trusted: bool) -> Trusted:
    """The Authentication-Results we believe (see the module docstring), and notes on the ones we do not."""
    import authres

    ids = {i.strip().lower() for i in trusted_ids if i.strip()}
    out = Trusted()
    names = [k.lower() for k, _ in fields]
    top_received = names.index("received") if "received" in names else None
    seen = 0
    for i, (name, value) in enumerate(fields):
        if name.lower() != "authentication-results":
            continue
        seen += 1
        if seen > MAX_RESULTS:
            out.notes.append(f"more than {MAX_RESULTS} Authentication-Results fields: the rest not read")
            break
        try:
            header = authres.all_features().parse_value(value)
        except Exception as e:  # noqa: BLE001 -- authres raises its own syntax errors
            out.notes.append(f"Authentication-Results field {seen} unreadable ({type(e).__name__}): ignored")
            continue
        sid = (header.authserv_id or "").lower()
        if sid not in ids:
            out.notes.append(f"Authentication-Results from {sid or '?'} ignored: not a trusted authserv-id")
            continue
        if top_received is None or i > top_received:
            where = "no Received field below it" if top_received is None else "below the topmost Received field"
            out.notes.append(f"Authentication-Results claiming {sid} ignored: {where} (not added by our MTA)")
            continue
        if not relay_trusted:
            out.notes.append(f"Authentication-Results claiming {sid} ignored: the SMTP client is not one of "
                             "authentication.trusted_relays")
            continue
        out.ids.append(sid)
        _take(out, header.results[:MAX_RESULTS_PER_FIELD])
    return out


def _take(out: Trusted, results: list[object]) -> None:
    for r in results:
        method = str(getattr(r, "method", "")).lower()
        result = str(getattr(r, "result", "") or "none").lower()
        props = {(str(p.type).lower(), str(p.name).lower()): str(p.value) for p in getattr(r, "properties", [])}
        if method == "dmarc" and out.dmarc in (None, "none", "temperror", "permerror"):
            out.dmarc = result
            comment = str(getattr(r, "result_comment", "") or "")
            if "p=" in comment:
                out.dmarc_policy = comment.split("p=", 1)[1].split()[0].strip(";)")
        elif method == "spf" and (out.spf is None or out.spf.result != "pass"):
            domain = _domain_of(props.get(("smtp", "mailfrom"))) or _domain_of(props.get(("smtp", "helo")))
            out.spf = Method(result, domain)
        elif method == "dkim":
            out.dkim.append(Method(result, _domain_of(props.get(("header", "d")) or props.get(("header", "i")))))

"""The pure work of a mail done ahead, in the preparation worker (gateway.prepare), behind one object.

A handler asks `ctx.ahead` to parse, classify, turn HTML into text, sanitise it, store an attachment; it gets
the answer the worker computed for this mail when there is one, else the work is done here, now, the same way.
The handlers never learn which (`Ahead(None)`: nothing was done ahead, as in a handler's unit test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from email.message import EmailMessage

    from gateway.autoreply import BounceInfo, Verdict
    from gateway.mime import ParsedMail


class OverBudget(Exception):
    """The worker was killed on this mail (limits.mail_cpu_seconds), or it died on it twice (crashed)."""

    def __init__(self, *, crashed: bool) -> None:
        super().__init__("crashed" if crashed else "over budget")
        self.crashed = crashed


class Ahead:
    """prepared: the mail's gateway.prepare.Prepared (None: nothing was done ahead). Every field of it that is
    None means "do it here"."""

    def __init__(self, prepared: Any = None) -> None:
        self.prepared = prepared

    @property
    def sha256(self) -> str | None:
        return self.prepared.sha256 if self.prepared is not None else None

    def parse(self, raw: bytes, *, max_depth: int, max_parts: int) -> ParsedMail:
        """The parsed mail; raises OverBudget, gateway.mime.MailParseError or RecursionError."""
        from gateway.mime import MailParseError, parse_mail

        prep = self.prepared
        if prep is not None:
            if prep.over_budget or prep.crashed:
                raise OverBudget(crashed=not prep.over_budget)
            if prep.parse_error is not None:
                raise MailParseError(prep.parse_error)
            if prep.parse_recursion:
                raise RecursionError("maximum recursion depth exceeded")
            if prep.parsed is not None:
                return prep.parsed
        return parse_mail(raw, max_depth=max_depth, max_parts=max_parts)

    def _classified(self, envelope_from: str | None, own_domains: tuple[str, ...]) -> bool:
        """Was the mail classified ahead for these inputs?"""
        prep = self.prepared
        return prep is not None and prep.classified_for == (envelope_from, own_domains)

    def classify(self, message: EmailMessage, *, envelope_from: str | None, from_addr: str | None,
                 own_domains: tuple[str, ...]) -> Verdict | None:
        if self._classified(envelope_from, own_domains):
            return self.prepared.verdict
        from gateway.autoreply import classify

        return classify(message, envelope_from=envelope_from, from_addr=from_addr, own_domains=own_domains)

    def bounce_info(self, message: EmailMessage, *, envelope_from: str | None,
                    own_domains: tuple[str, ...]) -> BounceInfo | None:
        """A bounce's details (the mail was classified a bounce with these inputs)."""
        if self._classified(envelope_from, own_domains):
            return self.prepared.bounce
        from gateway.autoreply import bounce_info

        return bounce_info(message)

    def html_to_text(self, html: str) -> str:
        if self.prepared is not None and self.prepared.html_text is not None:
            return self.prepared.html_text
        from gateway.quotes import html_to_text

        return html_to_text(html)

    def sanitize_html(self, html: str) -> str:
        if self.prepared is not None and self.prepared.html_clean is not None:
            return self.prepared.html_clean
        from gateway.quotes import sanitize_html

        return sanitize_html(html)

    def attachment(self, i: int, data: bytes, put: Callable[[bytes], str]) -> tuple[str, int]:
        """(sha256, size) of the mail's i-th attachment, its bytes stored by `put` unless the worker stored them
        (its data is then b"": the blob store has it)."""
        prep = self.prepared
        if prep is not None and prep.shas is not None:
            return prep.shas[i], prep.sizes[i]
        return put(data), len(data)

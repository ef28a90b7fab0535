"""SMTP command pipelining (RFC 2920) for the outbox: one round trip to the relay per mail instead of four.

With a relay that announces PIPELINING (Postfix does), a mail's envelope (MAIL FROM, RCPT TO, DATA) goes out in
one write, and the end of a mail's content goes out together with the next mail's envelope: the relay's answer
to the one and its answers to the other come back in one round trip. Only one mail's content is ever unanswered,
and its result is handed on (`done`) the moment the relay's answer to its final dot arrives, before the next
mail's content is sent: the outbox records it while the next one goes out (gateway.outbound.sender.Recorder),
exactly as without pipelining.

The commands and the content on the wire are those smtplib.sendmail writes for the same mail (its command
spelling, `size=` when the relay announces SIZE, dot-stuffing, the final CRLF); only their grouping differs. The
results are those of gateway.outbound.sender.SMTPTransport.send: "sent" with the relay's answer, "failed" for a
5xx, "retry" for a 4xx, with the same texts. A broken connection, or a relay closing it (421), reports every mail
not answered yet as "retry" and raises Down.
"""

from __future__ import annotations

import re
import smtplib
from collections.abc import Callable, Iterator

Mail = tuple[int, str, str, bytes]  # (outbox id, envelope sender, recipient, raw bytes)
Result = tuple[int, str, str | None]  # (outbox id, sent | retry | failed, the relay's answer or the error)

_PLAIN = re.compile(r"^[\x21-\x3b\x3d\x3f-\x7e]{1,254}$")  # printable ASCII without <, > and space
_DOTS = re.compile(rb"(?m)^\.")  # smtplib._quote_periods


class Down(Exception):
    """The connection is unusable (broken, or closed by the relay): every mail not answered yet was reported
    "retry"; the caller drops the connection."""


def text(msg: bytes | str) -> str:
    """A relay's answer as one short line."""
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    return " ".join(str(msg).split())[:500]


def refusal(code: int, msg: bytes | str, what: str) -> tuple[str, str]:
    """(failed | retry, the reason) for a refusal: a 5xx is never tried again, anything else is."""
    return ("failed" if 500 <= int(code) < 600 else "retry"), f"{what}: {code} {text(msg)}"


def supported(conn: smtplib.SMTP) -> bool:
    return bool(conn.does_esmtp and conn.has_extn("pipelining"))


def content(raw: bytes) -> bytes:
    """The DATA content as smtplib.SMTP.data writes it: dot-stuffed, CRLF-terminated, the final dot."""
    q = _DOTS.sub(b"..", raw) if raw[:1] == b"." or b"\n." in raw else raw  # the search alone is 10 times faster
    if q[-2:] != b"\r\n":
        q += b"\r\n"
    return q + b".\r\n"


class _Stream:
    """One pipelined run over an open connection (see the module's docstring)."""

    def __init__(self, conn: smtplib.SMTP, mails: Iterator[Mail], done: Callable[[Result], None]) -> None:
        self.conn, self.mails, self.done = conn, mails, done
        self.size = bool(conn.does_esmtp and conn.has_extn("size"))
        self.unanswered: list[Mail] = []  # pulled from `mails`, no result reported yet

    def next_mail(self) -> tuple[Mail, bytes] | None:
        """The next mail with its envelope commands; one whose addresses cannot be written is failed here."""
        for mail in self.mails:
            row_id, env_from, rcpt, raw = mail
            if not ((env_from == "" or _PLAIN.match(env_from)) and _PLAIN.match(rcpt)):  # "": the null sender <>
                self.done((row_id, "failed", f"not a plain envelope address: {env_from!r} -> {rcpt!r}"))
                continue
            self.unanswered.append(mail)
            size = f" size={len(raw)}" if self.size else ""
            return mail, f"mail FROM:<{env_from}>{size}\r\nrcpt TO:<{rcpt}>\r\ndata\r\n".encode("ascii")
        return None

    def report(self, result: Result) -> None:
        self.unanswered = [m for m in self.unanswered if m[0] != result[0]]
        self.done(result)

    def reply(self) -> tuple[int, bytes]:
        code, msg = self.conn.getreply()
        if code == 421:  # the relay closes the connection
            raise Down(f"relay closing the connection: {code} {text(msg)}")
        return code, msg

    def run(self) -> None:
        got = self.next_mail()
        if got is None:
            return
        out = got[1]
        waiting: Mail | None = None  # the mail whose final dot went out with `out`
        reset = False  # `out` starts with a RSET after a refused transaction
        while got is not None:
            mail = got[0]
            self.conn.send(out)
            if waiting is not None:
                self.answer(waiting, *self.reply())
                waiting = None
            if reset:
                self.reply()
                reset = False
            (mcode, mmsg), (rcode, rmsg), (dcode, dmsg) = self.reply(), self.reply(), self.reply()
            row_id, env_from, rcpt, raw = mail
            got = None
            if dcode == 354 and mcode == 250 and rcode in (250, 251):
                got = self.next_mail()  # its envelope goes out with this mail's content
                out = content(raw) + (got[1] if got is not None else b"")
                waiting = mail
                if got is None:
                    self.conn.send(out)
                    self.answer(mail, *self.reply())
                continue
            if mcode != 250:
                what, why = refusal(mcode, mmsg, f"sender {env_from} refused")
            elif rcode not in (250, 251):
                what, why = refusal(rcode, rmsg, f"recipient {rcpt} refused")
            else:
                what, why = refusal(dcode, dmsg, "message refused")
            if dcode == 354:  # DATA taken although the envelope was refused: an empty content ends it
                self.conn.send(b".\r\n")
                self.reply()
            self.report((row_id, what, why))
            got = self.next_mail()
            if got is not None:
                out, reset = b"rset\r\n" + got[1], True

    def answer(self, mail: Mail, code: int, msg: bytes) -> None:
        if code == 250:
            self.report((mail[0], "sent", f"{code} {text(msg)}".strip()))
        else:
            self.report((mail[0], *refusal(code, msg, "message refused")))


def send_all(conn: smtplib.SMTP, mails: Iterator[Mail], done: Callable[[Result], None]) -> None:
    """Send `mails` over `conn` (whose EHLO announced PIPELINING), handing each result to `done` as soon as the
    relay answered. Raises Down after reporting every unanswered mail "retry"."""
    stream = _Stream(conn, mails, done)
    try:
        stream.run()
    except Down as e:
        reason = str(e)
    except (OSError, smtplib.SMTPException) as e:  # SMTPServerDisconnected, a reply that is no reply, ...
        reason = f"relay connection lost: {type(e).__name__}: {e}"
    else:
        return
    for mail in list(stream.unanswered):
        stream.report((mail[0], "retry", reason))
    raise Down(reason)

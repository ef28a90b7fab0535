"""The IMAP connection of one account: login, TLS or STARTTLS (verified), the folders, SELECT, SEARCH, fetch
by explicit UID lists, move (UID MOVE, or UID COPY + \\Deleted + UID EXPUNGE) and flag, IDLE, timeouts. It
knows nothing of the database: the ledger (gateway.imap.ledger) records what is durable."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.imap.account import ImapAccount, TlsSetupError

if TYPE_CHECKING:
    from imapclient import IMAPClient

    from gateway.lease import Lease

DELETED = b"\\Deleted"
BODY = b"BODY[]"
STOP_CHECK = 1.0  # how often a blocking wait looks at the stop event, in seconds

ClientFactory = Callable[[ImapAccount], "IMAPClient"]


class Mailbox:
    """One account's IMAP connection. client_factory (an option): makes the client instead of connecting
    (a test's own client); use_move: None uses UID MOVE where the server has it, False never does (UID COPY,
    \\Deleted, UID EXPUNGE)."""

    def __init__(self, account: ImapAccount, log: logging.LoggerAdapter[logging.Logger], *,
                 client_factory: ClientFactory | None = None, use_move: bool | None = None) -> None:
        self.account = account
        self.log = log
        self.client_factory = client_factory
        self.use_move = use_move
        self.client: IMAPClient | None = None
        self.capabilities: frozenset[bytes] = frozenset()
        self.idling = threading.Event()  # set while the connection waits in IDLE (tests wait for it)
        self.idle_count = 0  # IDLE commands issued

    # Connection ---------------------------------------------------------------------------------------------
    def connect(self) -> IMAPClient:
        from imapclient import IMAPClient
        from imapclient.imapclient import SocketTimeout

        a = self.account
        timeout = SocketTimeout(connect=a.timeout_seconds, read=a.timeout_seconds)
        if self.client_factory is not None:
            client = self.client_factory(a)
        elif a.security == "none":
            client = IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout)
        else:
            client = connect_tls(a, timeout)
        try:
            client.login(a.user, a.secret())
            self.capabilities = frozenset(c.upper() for c in client.capabilities())
            self.client = client
            self._ensure_folders()
        except BaseException:
            close(client)
            self.client = None
            raise
        self.log.debug("connected to %s:%s as %s", a.host, a.effective_port, a.user)
        return client

    def disconnect(self) -> None:
        if self.client is not None:
            close(self.client)
        self.client = None

    @property
    def connected(self) -> bool:
        return self.client is not None

    def _c(self) -> IMAPClient:
        assert self.client is not None, "not connected"
        return self.client

    def _ensure_folders(self) -> None:
        c = self._c()
        for folder in {self.account.processed_folder, self.account.quarantine_folder}:
            if folder and not c.folder_exists(folder):
                try:
                    c.create_folder(folder)
                    self.log.info("created folder %r", folder)
                except c.Error:
                    if not c.folder_exists(folder):  # created concurrently is fine
                        raise

    @property
    def has_move(self) -> bool:
        return b"MOVE" in self.capabilities if self.use_move is None else self.use_move

    @property
    def has_idle(self) -> bool:
        return b"IDLE" in self.capabilities

    @property
    def has_uidplus(self) -> bool:
        return b"UIDPLUS" in self.capabilities

    # Reading ------------------------------------------------------------------------------------------------
    def select(self, folder: str | None = None) -> int:
        """SELECT the polled folder (or `folder`); its UIDVALIDITY."""
        info = self._c().select_folder(folder or self.account.folder)
        return int(info[b"UIDVALIDITY"])

    def undeleted(self) -> list[int]:
        """UIDs of the selected folder's messages not flagged \\Deleted."""
        return [int(u) for u in self._c().search(["UNDELETED"])]

    def sizes(self, uids: Sequence[int]) -> dict[int, int]:
        """RFC822.SIZE of each UID still there (an expunged one is missing)."""
        wanted = set(uids)
        data = self._c().fetch(list(uids), ["RFC822.SIZE"])
        return {uid: int(d.get(b"RFC822.SIZE", 0)) for uid, d in data.items() if uid in wanted}

    def bodies(self, uids: Sequence[int]) -> list[tuple[int, bytes]]:
        """BODY.PEEK[] (the \\Seen flag left alone) of a UID list, in its order; an expunged one is left out."""
        if not uids:
            return []
        data = self._c().fetch(list(uids), ["BODY.PEEK[]"])
        out: list[tuple[int, bytes]] = []
        for uid in uids:
            item = data.get(uid)
            raw = item.pop(BODY, None) if item else None
            if raw is not None:
                out.append((uid, bytes(raw)))
        return out

    # Moving -------------------------------------------------------------------------------------------------
    def move(self, uids: list[int], folder: str, *, track: bool = False) -> dict[int, tuple[int, int]]:
        """UID MOVE (or UID COPY + \\Deleted + UID EXPUNGE) of a UID set. track=True: returns where each
        message went, uid -> (UIDVALIDITY, UID) in `folder`, from the server's COPYUID (UIDPLUS); {} when
        the server did not say. No folder: flagged \\Deleted and expunged (the mail lives on in the gateway)."""
        c = self._c()
        if not folder:
            c.add_flags(uids, [DELETED], silent=True)
            self._expunge(uids)
            return {}
        untagged = getattr(getattr(c, "_imap", None), "untagged_responses", None)
        if track and isinstance(untagged, dict):
            untagged.pop("COPYUID", None)
        if self.has_move:
            c.move(uids, folder)
        else:
            c.copy(uids, folder)
        copyuid = untagged.pop("COPYUID", None) if track and isinstance(untagged, dict) else None
        if not self.has_move:
            c.add_flags(uids, [DELETED], silent=True)
            self._expunge(uids)
        if not copyuid:
            return {}
        wanted = set(uids)
        out: dict[int, tuple[int, int]] = {}
        for line in copyuid:
            out.update((src, key) for src, key in parse_copyuid(line).items() if src in wanted)
        return out

    def _expunge(self, uids: list[int]) -> None:
        if self.has_uidplus:
            self._c().uid_expunge(uids)
        else:  # without UIDPLUS only a plain EXPUNGE exists: it also removes others' \Deleted messages
            self._c().expunge()

    def refile(self, keys: Mapping[int, tuple[int, int]], source: str, dest: str) -> set[int]:
        """Move messages (mail id -> (UIDVALIDITY, UID) in `source`) to `dest`; returns the mail ids moved.
        Selects `source` for it, then the polled folder again."""
        c = self._c()
        moved: set[int] = set()
        try:
            validity = self.select(source)
            wanted = {uid: mail_id for mail_id, (v, uid) in keys.items() if v == validity}
            if len(wanted) < len(keys):
                self.log.warning("UIDVALIDITY of %r changed: %d quarantined mail(s) stay there", source,
                                 len(keys) - len(wanted))
            present = set(c.search(["UID", uid_set(sorted(wanted))])) if wanted else set()
            uids = sorted(u for u in wanted if u in present)
            if uids:
                self.move(uids, dest)
                moved = {wanted[u] for u in uids}
        finally:
            self.select()
        return moved

    # IDLE ---------------------------------------------------------------------------------------------------
    def idle(self, stop: threading.Event, lease: Lease) -> None:
        """IDLE until new mail, `idle_seconds` (then re-issued by the caller), `stop`, or the lease was lost.
        Raises ConnectionError when the connection died (an empty answer long before the timeout: the socket
        hit EOF, or BYE)."""
        client = self._c()
        client.idle()
        self.idle_count += 1
        self.idling.set()
        try:
            new_mail, dead = self._idle_wait(client, stop, lease)
        except BaseException:
            self.idling.clear()
            self.disconnect()  # the connection is in an unknown state: the caller reconnects
            raise
        self.idling.clear()
        if dead:
            self.disconnect()
            raise ConnectionError("IMAP connection closed during IDLE")
        client.idle_done()  # fails (and the caller reconnects) on a connection that died silently
        self.log.debug("IDLE ended (%s)", "new mail" if new_mail else "stop" if stop.is_set() else "re-issue")

    def _idle_wait(self, client: IMAPClient, stop: threading.Event, lease: Lease) -> tuple[bool, bool]:
        """(new mail, dead connection)."""
        deadline = time.monotonic() + self.account.idle_seconds
        while not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if lease.due() and not lease.ensure():
                self.log.warning("lost the lease on this mailbox during IDLE")
                break
            wait = min(STOP_CHECK, remaining, max(lease.renew_in(), 0.05))
            started = time.monotonic()
            responses = client.idle_check(timeout=wait)
            if not responses:
                if wait >= 0.2 and time.monotonic() - started < wait * 0.5:
                    return False, True  # readable but nothing to read: EOF
                continue
            new_mail = any(len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses)
            dead = any(r and r[0] == b"BYE" for r in responses)
            if new_mail or dead:
                return new_mail, dead
        return False, False


def close(client: IMAPClient) -> None:
    """LOGOUT, or drop the connection when that fails."""
    try:
        client.logout()
    except Exception:  # noqa: BLE001 -- already gone
        with contextlib.suppress(Exception):
            client.shutdown()


def connect_tls(a: ImapAccount, timeout: Any) -> IMAPClient:
    """Implicit TLS or STARTTLS, the certificate verified (ca_file or the system's CAs). A certificate that
    is not accepted raises TlsSetupError; network trouble raises as usual (retried)."""
    import ssl

    from imapclient import IMAPClient

    context = a.ssl_context()
    client: IMAPClient | None = None
    try:
        if a.security == "tls":
            return IMAPClient(a.host, port=a.effective_port, ssl=True, ssl_context=context, timeout=timeout)
        client = IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout)
        client.starttls(context)
        return client
    except ssl.SSLCertVerificationError as e:
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
        where = f"{a.host}:{a.effective_port} ({a.security})"
        trust = f"ca_file {a.ca_file}" if a.ca_file else "the system's CAs (set ca_file for a private CA)"
        raise TlsSetupError(f"the certificate of {where} was not accepted: {e.verify_message or e} "
                            f"(verified against {trust})") from e


def connect_plain_or_tls(a: ImapAccount) -> IMAPClient:
    """A connection as the poller makes it (no login), for `imap status`."""
    from imapclient import IMAPClient
    from imapclient.imapclient import SocketTimeout

    timeout = SocketTimeout(connect=a.timeout_seconds, read=a.timeout_seconds)
    if a.security == "none":
        return IMAPClient(a.host, port=a.effective_port, ssl=False, timeout=timeout)
    return connect_tls(a, timeout)


def parse_copyuid(line: bytes | str) -> dict[int, tuple[int, int]]:
    """`COPYUID uidvalidity source-set dest-set` data (RFC 4315) -> source uid -> (uidvalidity, dest uid)."""
    if isinstance(line, bytes):
        line = line.decode("ascii", "replace")
    parts = line.split()
    if len(parts) != 3:
        return {}
    try:
        validity = int(parts[0])
        src, dst = expand_set(parts[1]), expand_set(parts[2])
    except ValueError:
        return {}
    if len(src) != len(dst):
        return {}
    return {s: (validity, d) for s, d in zip(src, dst, strict=True)}


MAX_SET = 100_000  # a server's COPYUID answer names at most this many UIDs (bounded: it is the server's text)


def expand_set(text: str) -> list[int]:
    out: list[int] = []
    for piece in text.split(","):
        lo, _, hi = piece.partition(":")
        a, b = int(lo), int(hi or lo)
        if abs(b - a) + len(out) > MAX_SET:
            raise ValueError("UID set too large")
        out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


def uid_set(uids: Sequence[int]) -> str:
    """Sorted UIDs as a compact IMAP sequence set (1:3,7)."""
    out: list[str] = []
    i = 0
    while i < len(uids):
        j = i
        while j + 1 < len(uids) and uids[j + 1] == uids[j] + 1:
            j += 1
        out.append(str(uids[i]) if i == j else f"{uids[i]}:{uids[j]}")
        i = j + 1
    return ",".join(out)


__all__ = ["Mailbox", "close", "connect_plain_or_tls", "connect_tls", "expand_set", "parse_copyuid", "uid_set"]

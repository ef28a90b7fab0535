"""What every desk adapter offers, the errors it raises, and the HTTP client they share (httpx, async).

httpx's AsyncClient: the service is one asyncio loop; an async client waits for a slow desk without holding a
thread (a thread cannot be stopped; a task is cancelled at shutdown) and without blocking SMTP sessions.

Errors, as the delivery round treats them:
* DeskDown     -- connection refused or lost, timeout, 5xx, 401/403: try again later (backoff). `uncertain`: the
                  request may have reached the desk (a create then looks for what it may have made first).
* RateLimited  -- 429: the desk asked us to wait `retry_after` seconds; nothing is sent before then.
* TooLarge     -- 413: the file is over the desk's limit (a note on the ticket says so).
* Rejected     -- another 4xx: this push cannot succeed as it is (failed; `backend retry` after a fix).
"""

from __future__ import annotations

import email.utils
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from gateway.backends.settings import Settings

log = logging.getLogger("gateway.backends")

MAX_RESPONSE_BYTES = 32 * 1024 * 1024
MAX_RETRY_AFTER = 3600.0


class DeskError(Exception):
    pass


class DeskDown(DeskError):
    def __init__(self, message: str, *, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


class RateLimited(DeskError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(DeskError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TooLarge(Rejected):
    pass


class NotFound(Rejected):
    pass


class Pending(DeskError):
    """Something the desk makes asynchronously is not there yet (a SMAX person): try again shortly."""


class Blocked(DeskError):
    """This push waits for an earlier one of its ticket (a create the desk refused): retry with backoff,
    the other tickets' pushes go on."""


@dataclass
class RemoteRef:
    key: str  # what the API addresses the request by (Jira issue key, Zammad ticket id, SMAX request id)
    id: str = ""  # a second identity where the desk has one (Jira issue id, Zammad ticket number)


@dataclass
class RemoteTicket:
    key: str
    status: str
    updated: datetime | None = None
    id: str = ""


@dataclass
class RemoteComment:
    id: str
    body: str
    public: bool
    author_id: str = ""
    author_email: str = ""
    author_name: str = ""
    is_agent: bool | None = None  # None: the desk does not say (decided by the sync)
    created: datetime | None = None


@dataclass
class NewRequest:
    ref: str
    number: int
    subject: str
    description: str
    request_type: str | None
    customer_email: str
    customer_name: str
    participants: list[str] = field(default_factory=list)  # remote customer ids


@dataclass
class CheckLine:
    ok: bool
    what: str

    def __str__(self) -> str:
        return f"{'ok     ' if self.ok else 'MISSING'} {self.what}"


def retry_after(value: str | None, now: datetime | None = None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 60 when absent or unreadable;
    at most an hour (a desk cannot park us for a day by mistake)."""
    if not value:
        return 60.0
    value = value.strip()
    try:
        return max(1.0, min(float(value), MAX_RETRY_AFTER))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return 60.0
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return max(1.0, min(delta, MAX_RETRY_AFTER))


class Desk(ABC):
    """One service desk's REST API. `client` is shared (connection pool); every method is async."""

    kind = ""
    page_size = 100  # requests per page of `updated_since`

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.client = client
        self._me: str | None = None

    # HTTP ------------------------------------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {}

    async def before_request(self) -> None:  # noqa: B027 -- an optional hook, empty by default
        """A desk with a session (SMAX) logs in here."""

    async def on_unauthorised(self) -> bool:
        """True when credentials were renewed and the request may be sent once more."""
        return False

    async def request(self, method: str, path: str, *, json: Any = None, params: Any = None,
                      files: Any = None, headers: dict[str, str] | None = None, base: str | None = None,
                      ok: tuple[int, ...] = (200, 201, 204)) -> httpx.Response:
        await self.before_request()
        url = (base or self.settings.url) + path
        for attempt in (1, 2):
            h = {"Accept": "application/json", **self.auth_headers(), **(headers or {})}
            try:
                r = await self.client.request(method, url, json=json, params=params, files=files, headers=h,
                                              timeout=self.settings.timeout)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                raise DeskDown(f"{self.kind} unreachable: {type(e).__name__}") from None
            except (httpx.TimeoutException, httpx.TransportError) as e:
                # sent, or partly: whether the desk acted on it is unknown
                raise DeskDown(f"{self.kind}: no answer to {method} {path}: {type(e).__name__}",
                               uncertain=method != "GET") from None
            if r.status_code in (401, 403) and attempt == 1 and await self.on_unauthorised():
                continue
            break
        if len(r.content) > MAX_RESPONSE_BYTES:
            raise Rejected(f"{self.kind}: answer to {method} {path} is over {MAX_RESPONSE_BYTES} bytes", 502)
        if r.status_code in ok:
            return r
        text = " ".join(r.text.split())[:300]
        what = f"{self.kind}: {method} {path} -> {r.status_code} {text}"
        if r.status_code == 429:
            raise RateLimited(what, retry_after(r.headers.get("Retry-After")))
        if r.status_code >= 500:
            raise DeskDown(what, uncertain=method != "GET")
        if r.status_code in (401, 403, 407):
            raise DeskDown(f"{self.kind}: not authorised ({r.status_code}) for {method} {path}")
        if r.status_code == 413:
            raise TooLarge(what, 413)
        if r.status_code == 404:
            raise NotFound(what, 404)
        raise Rejected(what, r.status_code)

    async def get_json(self, path: str, **kw: Any) -> Any:
        r = await self.request("GET", path, **kw)
        return _json(r)

    async def send_json(self, method: str, path: str, body: Any, **kw: Any) -> Any:
        r = await self.request(method, path, json=body, **kw)
        return _json(r) if r.content else None

    # The operations ----------------------------------------------------------------------------------
    async def me(self) -> str:
        """The id of the integration account (its comments are ours, never imported)."""
        if self._me is None:
            self._me = await self.whoami()
        return self._me

    @abstractmethod
    async def whoami(self) -> str: ...

    @abstractmethod
    async def customer(self, email_addr: str, name: str) -> str:
        """Find or create the customer; the id the desk knows them by (Zammad: 'guess:EMAIL')."""

    @abstractmethod
    async def create(self, req: NewRequest, customer_id: str) -> RemoteRef: ...

    @abstractmethod
    async def find(self, ref: str) -> RemoteRef | None:
        """The request carrying our reference, if a create reached the desk before."""

    @abstractmethod
    async def comment(self, key: str, body: str, internal: bool) -> str: ...

    @abstractmethod
    async def attach(self, key: str, filename: str, content_type: str, data: bytes, internal: bool) -> str: ...

    @abstractmethod
    async def update(self, key: str, *, status: str | None = None, priority: str | None = None) -> None: ...

    async def participants(self, key: str, customer_ids: list[str]) -> None:  # noqa: B027 -- optional hook
        """Request participants (Jira); desks without them ignore this."""

    has_participants = False

    @abstractmethod
    async def updated_since(self, since: datetime | None, now: datetime, max_pages: int) -> list[RemoteTicket]:
        """Requests updated since `since` (oldest first), at most max_pages pages."""

    @abstractmethod
    async def read(self, key: str) -> RemoteTicket: ...

    @abstractmethod
    async def comments(self, key: str, limit: int) -> list[RemoteComment]: ...

    @abstractmethod
    async def check(self) -> list[CheckLine]: ...

    # Webhooks ---------------------------------------------------------------------------------------
    signature_algorithm = "sha256"

    @staticmethod
    def webhook_keys(payload: Any) -> list[str]:
        return []


def _json(r: httpx.Response) -> Any:
    try:
        return r.json()
    except ValueError:
        raise DeskDown(f"answer is not JSON ({r.status_code}, {r.headers.get('content-type', '?')})") from None


def minutes_since(since: datetime | None, now: datetime, default: int = 24 * 60) -> int:
    """Whole minutes back to `since`, plus two of margin (clock skew, the desk's own indexing delay)."""
    if since is None:
        return default
    return max(1, int((now - since).total_seconds() // 60) + 2)


def parse_time(value: Any) -> datetime | None:
    if not value or not isinstance(value, (str, int, float)):
        return None
    if isinstance(value, (int, float)):  # epoch milliseconds (SMAX)
        return datetime.fromtimestamp(value / 1000, UTC)
    v = value.strip()
    if v.endswith("Z"):
        v = v[:-1] + "+00:00"
    if len(v) > 5 and v[-5] in "+-" and v[-3] != ":":  # +0000 -> +00:00 (Jira)
        v = v[:-2] + ":" + v[-2:]
    try:
        t = datetime.fromisoformat(v)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)

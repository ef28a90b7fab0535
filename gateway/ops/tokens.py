"""API tokens, shared by the CLI (`tokens create|list|revoke`) and the HTTP API's authentication.

A secret is `tgw_` + 43 characters of base64url (256 random bits), printed once by `tokens create`; only its
sha256 is stored (a secret of that entropy needs no slow hash: nothing can be guessed from the digest). A
presented token is hashed and looked up by digest, then compared with `hmac.compare_digest`."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.db import transaction
from gateway.models import TOKEN_SCOPES, ApiToken
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page
from gateway.views import iso

if TYPE_CHECKING:
    from gateway.app import App

PREFIX = "tgw_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_SECRET = re.compile(r"^tgw_[A-Za-z0-9_-]{43}$")
RANK = {scope: i for i, scope in enumerate(TOKEN_SCOPES)}  # read < write < admin


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name and scope (never its secret)."""

    token_id: int
    name: str
    scope: str
    last_used_at: datetime | None

    def allows(self, scope: str) -> bool:
        return RANK[self.scope] >= RANK[scope]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def token_view(t: ApiToken) -> dict[str, Any]:
    return {"name": t.name, "scope": t.scope, "prefix": t.prefix, "created_at": iso(t.created_at),
            "last_used_at": iso(t.last_used_at), "revoked_at": iso(t.revoked_at), "active": t.revoked_at is None}


def create_token(app: App, name: str, scope: str = "read") -> tuple[dict[str, Any], str]:
    """A new token; returns (its view, the secret). The secret is not kept and cannot be shown again."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise Invalid("name: 1-100 letters, digits, . _ @ - (starting with a letter or digit)", field="name")
    if scope not in TOKEN_SCOPES:
        raise Invalid(f"scope: one of {', '.join(TOKEN_SCOPES)}", field="scope")
    secret = PREFIX + secrets.token_urlsafe(32)
    with transaction(app.sessions) as s:
        if s.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
            raise Conflict(f"a token named {name!r} exists (revoke it, or choose another name)")
        t = ApiToken(name=name, scope=scope, secret_sha256=digest(secret), prefix=secret[:8],
                     created_at=app.clock())
        s.add(t)
        s.flush()
        return token_view(t), secret


def list_tokens(app: App, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    after = pages.str_key(pages.decode(cursor), "n") if cursor else None
    with app.sessions() as s:
        q = select(ApiToken).order_by(ApiToken.name)
        if after is not None:
            q = q.where(ApiToken.name > after)
        rows = list(s.scalars(q.limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return Page([token_view(t) for t in rows], pages.encode({"n": rows[-1].name}) if more and rows else None)


def revoke_token(app: App, name: str) -> dict[str, Any]:
    """Revoke (the row stays, so the name shows who had access); a revoked token is refused at once."""
    with transaction(app.sessions) as s:
        t = s.scalar(select(ApiToken).where(ApiToken.name == name))
        if t is None:
            raise NotFound(f"no token {name!r}")
        if t.revoked_at is None:
            t.revoked_at = app.clock()
        return token_view(t)


def authenticate(app: App, secret: str) -> Principal | None:
    """The active token with this secret, or None. Malformed secrets are refused without a query."""
    if not _SECRET.match(secret):
        return None
    want = digest(secret)
    with app.sessions() as s:
        row = s.execute(select(ApiToken.id, ApiToken.name, ApiToken.scope, ApiToken.secret_sha256,
                               ApiToken.revoked_at, ApiToken.last_used_at)
                        .where(ApiToken.secret_sha256 == want)).first()
    if row is None or not hmac.compare_digest(row.secret_sha256, want) or row.revoked_at is not None:
        return None
    return Principal(row.id, row.name, row.scope, row.last_used_at)


def touch(app: App, token_id: int) -> None:
    """Note when a token was last used (the API calls this at most once a minute per token)."""
    with transaction(app.sessions) as s:
        t = s.get(ApiToken, token_id)
        if t is not None:
            t.last_used_at = app.clock()

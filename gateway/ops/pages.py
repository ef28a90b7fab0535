"""Pagination of every list: `limit` (at most MAX_LIMIT) and an opaque `cursor` that continues after the last
item of the previous page (keyset: stable while rows are added, and each page costs one indexed query)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from gateway.ops.errors import Invalid

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_CURSOR = 512  # characters: a cursor is a few keys, never a list


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor, **self.extra}


def limit_of(value: Any, default: int = DEFAULT_LIMIT) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise Invalid(f"limit: a number 1-{MAX_LIMIT}", field="limit") from None
    if not 1 <= n <= MAX_LIMIT:
        raise Invalid(f"limit: a number 1-{MAX_LIMIT}", field="limit")
    return n


def encode(key: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode(cursor: str | None) -> dict[str, Any] | None:
    if not cursor:
        return None
    if len(cursor) > MAX_CURSOR:
        raise Invalid("cursor: not one this server gave", field="cursor")
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError):
        raise Invalid("cursor: not one this server gave", field="cursor") from None
    if not isinstance(data, dict):
        raise Invalid("cursor: not one this server gave", field="cursor")
    return data


def int_key(cursor: dict[str, Any] | None, name: str) -> int | None:
    if cursor is None:
        return None
    v = cursor.get(name)
    if not isinstance(v, int) or isinstance(v, bool):
        raise Invalid("cursor: not one this server gave", field="cursor")
    return v


def str_key(cursor: dict[str, Any] | None, name: str) -> str | None:
    if cursor is None:
        return None
    v = cursor.get(name)
    if not isinstance(v, str) or len(v) > 400:
        raise Invalid("cursor: not one this server gave", field="cursor")
    return v

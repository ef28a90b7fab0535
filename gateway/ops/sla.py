"""SLA policies, shared by the CLI (`sla policies add|list|remove|show`) and the API (/api/v1/sla-policies).

`put_policy` is an upsert that reports whether anything changed: a second identical PUT (an Ansible task
run twice) writes nothing and says `changed: false`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from gateway.db import transaction
from gateway.models import SlaPolicyRow
from gateway.ops import pages
from gateway.ops.errors import Conflict, Invalid, NotFound
from gateway.ops.pages import Page

if TYPE_CHECKING:
    from gateway.app import App
    from gateway.sla.store import PolicyStore

# the API's fields of a policy (the CLI's options) and their defaults
POLICY_FIELDS: dict[str, Any] = {
    "response_minutes": None, "resolution_minutes": None, "priorities": [], "types": [], "organisations": [],
    "groups": [], "warn_percent": 80, "warn_minutes_before": None, "escalate_to": [], "calendar": None,
    "holidays": [], "notify_assignee": True, "notify_group": True, "active": True,
}


def policy_view(row: SlaPolicyRow) -> dict[str, Any]:
    from gateway.sla_definitions import calendar_text

    return {"name": row.name, "position": row.position, "active": row.active,
            "response_minutes": row.response_minutes, "resolution_minutes": row.resolution_minutes,
            "priorities": row.priorities, "types": row.types, "organisations": row.organisations,
            "groups": row.groups, "calendar": row.calendar, "calendar_text": calendar_text(row.calendar),
            "warn_percent": row.warn_percent, "warn_minutes_before": row.warn_minutes_before,
            "escalate_to": row.escalate_to, "notify_assignee": row.notify_assignee,
            "notify_group": row.notify_group, "source": row.source}


def _store(s: Session, app: App) -> PolicyStore:
    from gateway.sla.store import PolicyStore

    store = PolicyStore(s, app.clock)
    seed = app.config.get("sla", "policies")
    if seed:
        store.seed(seed)
    return store


def policy_values(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The row values of a policy definition (API body or CLI options); raises Invalid naming the field."""
    from gateway.sla_definitions import PolicyError, validate_values

    unknown = sorted(set(body) - set(POLICY_FIELDS) - {"position", "name"})
    if unknown:
        raise Invalid(f"{unknown[0]}: unknown field", field=unknown[0])
    v = {**POLICY_FIELDS, **{k: x for k, x in body.items() if k in POLICY_FIELDS}}
    for k in ("response_minutes", "resolution_minutes"):
        if not isinstance(v[k], int) or isinstance(v[k], bool):
            raise Invalid(f"{k}: a number of minutes", field=k)
    if v["holidays"] and not v["calendar"]:
        raise Invalid("holidays: needs a calendar", field="holidays")
    try:
        return validate_values(name, response=v["response_minutes"], resolution=v["resolution_minutes"],
                               priorities=v["priorities"], types=v["types"], organisations=v["organisations"],
                               groups=v["groups"], warn_at=v["warn_percent"], warn_before=v["warn_minutes_before"],
                               escalate_to=v["escalate_to"], calendar=v["calendar"], holidays=v["holidays"] or (),
                               notify_assignee=bool(v["notify_assignee"]), notify_group=bool(v["notify_group"]),
                               active=bool(v["active"]))
    except PolicyError as e:
        raise Invalid(str(e)) from None


def list_policies(app: App, *, limit: int = pages.DEFAULT_LIMIT, cursor: str | None = None) -> Page:
    """In the order they are tried."""
    start = pages.int_key(pages.decode(cursor), "i") if cursor else 0
    with transaction(app.sessions) as s:
        rows = _store(s, app).rows()
        chunk = rows[start or 0:(start or 0) + limit]
        more = (start or 0) + limit < len(rows)
        return Page([policy_view(r) for r in chunk], pages.encode({"i": (start or 0) + limit}) if more else None)


def get_policy(app: App, name: str) -> dict[str, Any]:
    with transaction(app.sessions) as s:
        row = _store(s, app).get(name)
        if row is None:
            raise NotFound(f"no SLA policy {name!r}")
        return policy_view(row)


def put_policy(app: App, name: str, body: dict[str, Any], *, replace: bool = True,
               source: str = "api") -> tuple[dict[str, Any], bool, bool]:
    """Create or replace the policy `name` with this definition (fields left out take their defaults).
    position: where it goes (1: tried first); left out: an existing policy keeps its place, a new one goes
    last. replace=False (the CLI's `add` without --replace): an existing policy is a conflict. Returns
    (policy, created, changed); nothing is written when nothing would change."""
    from gateway.sla_definitions import PolicyError

    values = policy_values(name, body)
    position = body.get("position")
    if position is not None and (not isinstance(position, int) or isinstance(position, bool) or position < 1):
        raise Invalid("position: 1 or more", field="position")
    with transaction(app.sessions) as s:
        store = _store(s, app)
        row = store.get(values["name"], include_removed=True)
        live = row is not None and row.removed_at is None
        if live and not replace:
            raise Conflict(f"policy {values['name']!r} exists (use --replace to change it)")
        if live and row is not None:
            same = all(getattr(row, k) == v for k, v in values.items())
            if same and (position is None or position == row.position):
                return policy_view(row), False, False
            if position == row.position:
                position = None  # keeps its place; moving it onto itself would shift the others
        try:
            row = store.add(values, position=position, replace=True, source=source)
        except PolicyError as e:
            raise Invalid(str(e)) from None
        return policy_view(row), not live, True


def remove_policy(app: App, name: str) -> None:
    with transaction(app.sessions) as s:
        if not _store(s, app).remove(name):
            raise NotFound(f"no SLA policy {name!r}")

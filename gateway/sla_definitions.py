"""SLA policies as people write them (the CLI's `sla policies add` options, the config's `[sla] policies`
seed): calendars, validation, and the column values of a policy row. Pure: no database; the config check
uses it, and so does gateway.sla.store."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time
from typing import Any

from gateway.sla_policy import PRIORITIES, TYPES, Calendar, Policy

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ADDR = re.compile(r"^[^@\s<>]+@[^@\s<>]+$")


class PolicyError(ValueError):
    """A policy definition that cannot be used; the message says why."""


# Calendars --------------------------------------------------------------------------------------------------
def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.lower().split(","):
        part = part.strip()
        if not part:
            continue
        a, _, b = part.partition("-")
        try:
            i = DAY_NAMES.index(a[:3])
            j = DAY_NAMES.index(b[:3]) if b else i
        except ValueError:
            raise PolicyError(f"calendar: unknown day {part!r} (use mon..sun, e.g. mon-fri)") from None
        if j < i:
            raise PolicyError(f"calendar: day range {part!r} runs backwards")
        days.update(range(i, j + 1))
    if not days:
        raise PolicyError("calendar: no working days")
    return frozenset(days)


def _parse_hhmm(text: str) -> time:
    m = re.fullmatch(r"(\d{1,2}):(\d{2})", text.strip())
    if not m or int(m.group(1)) > 23 or int(m.group(2)) > 59:
        raise PolicyError(f"calendar: {text!r} is not a time like 09:00")
    return time(int(m.group(1)), int(m.group(2)))


def _parse_date(v: Any) -> date:
    if isinstance(v, datetime):
        raise PolicyError(f"calendar holidays: a date is needed, got {v!r}")
    if isinstance(v, date):
        return v
    try:
        return date.fromisoformat(str(v).strip())
    except ValueError:
        raise PolicyError(f"calendar holidays: {v!r} is not a date like 2026-12-25") from None


def parse_calendar(spec: str, holidays: Iterable[Any] = ()) -> Calendar:
    """`"Europe/Berlin mon-fri 09:00-17:00"` (zone, working days, working hours) -> Calendar."""
    parts = spec.split()
    if len(parts) != 3 or "-" not in parts[2]:
        raise PolicyError(f"calendar {spec!r}: expected 'ZONE DAYS HH:MM-HH:MM', e.g. "
                          "'Europe/Berlin mon-fri 09:00-17:00'")
    tz, days, hours = parts
    start, _, end = hours.partition("-")
    try:
        return Calendar(tz=tz, days=_parse_days(days), start=_parse_hhmm(start), end=_parse_hhmm(end),
                        holidays=frozenset(_parse_date(h) for h in holidays))
    except PolicyError:
        raise
    except ValueError as e:
        raise PolicyError(str(e)) from None


def calendar_to_json(cal: Calendar | None) -> dict[str, Any] | None:
    if cal is None:
        return None
    return {"tz": cal.tz, "days": sorted(cal.days), "start": cal.start.strftime("%H:%M"),
            "end": cal.end.strftime("%H:%M"), "holidays": sorted(d.isoformat() for d in cal.holidays)}


def calendar_from_json(d: Mapping[str, Any] | None) -> Calendar | None:
    if not d:
        return None
    return Calendar(tz=d["tz"], days=frozenset(d["days"]), start=_parse_hhmm(d["start"]),
                    end=_parse_hhmm(d["end"]), holidays=frozenset(date.fromisoformat(h) for h in d["holidays"]))


def calendar_text(d: Mapping[str, Any] | None) -> str:
    if not d:
        return "around the clock"
    days = list(d["days"])
    if days == list(range(days[0], days[-1] + 1)) and len(days) > 1:
        dtext = f"{DAY_NAMES[days[0]]}-{DAY_NAMES[days[-1]]}"
    else:
        dtext = ",".join(DAY_NAMES[i] for i in days)
    hol = f" (+{len(d['holidays'])} holidays)" if d.get("holidays") else ""
    return f"{d['tz']} {dtext} {d['start']}-{d['end']}{hol}"



def _names(value: Any, what: str, known: Iterable[str] | None = None) -> list[str]:
    if value is None:
        return []
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    if known is not None:
        known = set(known)
        bad = [v for v in items if v not in known]
        if bad:
            raise PolicyError(f"{what}: unknown {bad[0]!r} (one of {', '.join(sorted(known))})")
    return sorted(set(items), key=items.index)


def validate_values(name: str, *, response: Any, resolution: Any, priorities: Any = None, types: Any = None,
                    organisations: Any = None, groups: Any = None, warn_at: Any = 80, warn_before: Any = None,
                    escalate_to: Any = None, calendar: Calendar | str | None = None, holidays: Iterable[Any] = (),
                    notify_assignee: bool = True, notify_group: bool = True, active: bool = True) -> dict[str, Any]:
    """Check a policy definition (CLI or config seed) and return the column values of its row."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise PolicyError("policy name: 1-100 characters")
    cal = parse_calendar(calendar, holidays) if isinstance(calendar, str) else calendar
    addrs = _names(escalate_to, "escalate_to")
    bad = [a for a in addrs if not _ADDR.match(a)]
    if bad:
        raise PolicyError(f"escalate_to: not an email address: {bad[0]!r}")
    values = dict(name=name.strip(), response_minutes=response, resolution_minutes=resolution,
                  priorities=_names(priorities, "priorities", PRIORITIES), types=_names(types, "types", TYPES),
                  organisations=_names(organisations, "organisations"), groups=_names(groups, "groups"),
                  calendar=calendar_to_json(cal), warn_percent=warn_at or None,
                  warn_minutes_before=warn_before or None, escalate_to=[a.lower() for a in addrs],
                  notify_assignee=bool(notify_assignee), notify_group=bool(notify_group), active=bool(active))
    try:  # the pure layer has the last word on what a valid policy is
        Policy(name=values["name"], response_minutes=response, resolution_minutes=resolution,
               priorities=values["priorities"], types=values["types"], calendar=cal,
               warn_percent=values["warn_percent"], warn_minutes_before=values["warn_minutes_before"])
    except ValueError as e:
        raise PolicyError(as_written(str(e))) from None
    return values


# The pure layer's field names -> the names a policy is written with (config seed keys; the CLI's options
# are the same words: --response, --warn-at ...)
WRITTEN_NAMES = {"response_minutes": "response", "resolution_minutes": "resolution", "warn_percent": "warn_at",
                 "warn_minutes_before": "warn_before"}


def as_written(message: str) -> str:
    return re.sub(r"\b(" + "|".join(WRITTEN_NAMES) + r")\b", lambda m: WRITTEN_NAMES[m.group(1)], message)


SEED_KEYS = {"name", "response", "resolution", "priorities", "types", "organisations", "groups", "warn_at",
             "warn_before", "escalate_to", "calendar", "holidays", "notify_assignee", "notify_group", "active"}


def seed_values(item: Mapping[str, Any]) -> dict[str, Any]:
    """One `[sla] policies` entry of the config -> row values (raises PolicyError naming the problem)."""
    if not isinstance(item, Mapping):
        raise PolicyError("each policy must be a table")
    unknown = sorted(set(item) - SEED_KEYS)
    if unknown:
        raise PolicyError(f"{unknown[0]}: unknown key (known keys: {', '.join(sorted(SEED_KEYS))})")
    for k in ("name", "response", "resolution"):
        if k not in item:
            raise PolicyError(f"{k}: required key is missing")
    return validate_values(item["name"], response=item["response"], resolution=item["resolution"],
                           priorities=item.get("priorities"), types=item.get("types"),
                           organisations=item.get("organisations"), groups=item.get("groups"),
                           warn_at=item.get("warn_at", 80), warn_before=item.get("warn_before"),
                           escalate_to=item.get("escalate_to"), calendar=item.get("calendar"),
                           holidays=item.get("holidays", ()), notify_assignee=item.get("notify_assignee", True),
                           notify_group=item.get("notify_group", True), active=item.get("active", True))


def check_seed(items: list[Any]) -> str | None:
    """Config check for `[sla] policies`: None when every entry is a valid policy."""
    names = set()
    errors = []
    for i, item in enumerate(items):
        try:
            v = seed_values(item)
        except PolicyError as e:
            errors.append(f"[{i}]: {e}")
            continue
        if v["name"] in names:
            errors.append(f"[{i}]: policy {v['name']!r} is defined twice")
        names.add(v["name"])
    return "; ".join(errors) or None

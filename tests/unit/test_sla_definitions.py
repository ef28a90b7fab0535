"""Policy definitions (CLI and config seed), calendars, the `[sla]` config section, the SLA templates."""

from __future__ import annotations

from datetime import date, time
from typing import Any

import pytest

from gateway.config import ConfigError, validate
from gateway.sla_definitions import (
    PolicyError,
    calendar_from_json,
    calendar_text,
    calendar_to_json,
    check_seed,
    parse_calendar,
    seed_values,
    validate_values,
)


def test_parse_calendar() -> None:
    cal = parse_calendar("Europe/Berlin mon-fri 09:00-17:30", ["2026-12-25", date(2026, 12, 26)])
    assert cal.tz == "Europe/Berlin" and cal.days == frozenset(range(5))
    assert (cal.start, cal.end) == (time(9), time(17, 30))
    assert cal.holidays == {date(2026, 12, 25), date(2026, 12, 26)}
    assert calendar_from_json(calendar_to_json(cal)) == cal
    assert calendar_text(calendar_to_json(cal)) == "Europe/Berlin mon-fri 09:00-17:30 (+2 holidays)"
    assert parse_calendar("UTC mon,wed,sat-sun 08:00-12:00").days == {0, 2, 5, 6}


@pytest.mark.parametrize("spec", ["Europe/Berlin", "Mars/Base mon-fri 09:00-17:00", "UTC xyz 09:00-17:00",
                                  "UTC fri-mon 09:00-17:00", "UTC mon-fri 17:00-09:00", "UTC mon-fri 25:00-26:00"])
def test_bad_calendars(spec: str) -> None:
    with pytest.raises(PolicyError):
        parse_calendar(spec)


def test_validate_values() -> None:
    v = validate_values("gold", response=30, resolution=240, priorities="critical, high", types=["incident"],
                        escalate_to=["Lead@Example.com"], warn_at=75, warn_before=10)
    assert v["priorities"] == ["critical", "high"] and v["types"] == ["incident"]
    assert v["escalate_to"] == ["lead@example.com"]
    assert (v["warn_percent"], v["warn_minutes_before"]) == (75, 10)
    assert validate_values("x", response=1, resolution=2, warn_at=0)["warn_percent"] is None
    for kw in ({"response": 0}, {"priorities": "urgent"}, {"types": "bug"}, {"warn_at": 100},
               {"escalate_to": ["not-an-address"]}):
        args: dict[str, Any] = {"response": 30, "resolution": 60, **kw}
        with pytest.raises(PolicyError):
            validate_values("x", **args)


def test_seed_entries() -> None:
    v = seed_values({"name": "a", "response": 10, "resolution": 20, "calendar": "UTC mon-fri 09:00-17:00",
                     "holidays": [date(2026, 1, 1)]})
    assert v["calendar"]["holidays"] == ["2026-01-01"]
    assert "unknown key" in (check_seed([{"name": "a", "response": 1, "resolution": 2, "colour": "red"}]) or "")
    assert "required" in (check_seed([{"name": "a", "response": 1}]) or "")
    assert "twice" in (check_seed([{"name": "a", "response": 1, "resolution": 2}] * 2) or "")
    assert check_seed([{"name": "a", "response": 1, "resolution": 2}]) is None


def test_config_section() -> None:
    c = validate({})
    assert c.get("sla", "at_risk_minutes") == 60 and c.get("sla", "policies") == []
    c = validate({"sla": {"group_addresses": {"ops": "ops@example.com"},
                          "policies": [{"name": "p", "response": 5, "resolution": 50}]}})
    assert c.get("sla", "group_addresses") == {"ops": "ops@example.com"}
    with pytest.raises(ConfigError, match=r"sla\.policies: \[0\]: priorities"):
        validate({"sla": {"policies": [{"name": "p", "response": 5, "resolution": 50, "priorities": ["x"]}]}})
    with pytest.raises(ConfigError, match=r"sla\.group_addresses"):
        validate({"sla": {"group_addresses": {"ops": "nope"}}})
    with pytest.raises(ConfigError, match=r"sla\.sweep_seconds"):
        validate({"sla": {"sweep_seconds": 0}})


def test_example_config_lists_the_sla_section() -> None:
    from pathlib import Path

    from gateway.config import example_toml

    text = example_toml()
    assert "[sla]" in text and "at_risk_minutes = 60" in text
    example = Path(__file__).resolve().parents[2] / "config.example.toml"
    assert example.read_text() == text  # regenerate: python -m gateway check-config --example


def test_sla_templates_render() -> None:
    from gateway.outbound.render import Templates, sample_context
    from gateway.sla.mail import KINDS, SlaMailer, _WithSla, event_name, sample_sla

    t = Templates()
    SlaMailer.check_templates(t)
    for kind in KINDS:
        out = _WithSla(t, sample_sla(kind)).render(event_name(kind), sample_context("assignment"))
        assert "[#42]" in out.subject and out.text.strip() and "<html>" in out.html

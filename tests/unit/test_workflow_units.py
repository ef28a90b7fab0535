"""The pure parts of gateway.workflow: durations, link kinds and choices as people write them."""

from __future__ import annotations

import pytest

from gateway.models import TYPES
from gateway.tickets import InvalidChange
from gateway.workflow import choice, clean_tags, format_minutes, link_kind, parse_duration


@pytest.mark.parametrize(("text", "minutes"), [("1h30m", 90), ("1h 30m", 90), ("2h", 120), ("1.5h", 90),
                                               ("45m", 45), ("45min", 45), ("45", 45), ("100h", 6000)])
def test_durations(text, minutes):
    assert parse_duration(text) == minutes


@pytest.mark.parametrize("text", ["", "0", "0m", "h", "1d", "soon", "101h", "-5m", "1h30", "99999999"])
def test_bad_durations(text):
    with pytest.raises(InvalidChange, match="time:"):
        parse_duration(text)


def test_format_minutes():
    assert [format_minutes(m) for m in (5, 60, 90, 605)] == ["5m", "1h00m", "1h30m", "10h05m"]


@pytest.mark.parametrize(("text", "stored"), [
    ("relates", ("relates", False)), ("Related", ("relates", False)), ("blocks", ("blocks", False)),
    ("blocked-by", ("blocks", True)), ("Blocked By", ("blocks", True)), ("blocked_by", ("blocks", True)),
    ("duplicates", ("duplicates", False)), ("duplicated-by", ("duplicates", True)),
    ("caused-by", ("caused-by", False)), ("causes", ("caused-by", True))])
def test_link_kinds(text, stored):
    assert link_kind(text) == stored


@pytest.mark.parametrize("text", ["parent", "", "blocks-by", "follow_up_of"])
def test_unknown_link_kinds(text):
    with pytest.raises(InvalidChange, match="kind: one of relates"):
        link_kind(text)


def test_choices_in_any_spelling():
    assert [choice(v, "type", TYPES) for v in ("service_request", "Service-Request", "service request",
                                               "CHANGE_REQUEST")] == ["service_request", "service_request",
                                                                      "service_request", "change_request"]
    with pytest.raises(InvalidChange, match="type: one of incident"):
        choice("servicerequest", "type", TYPES)


def test_tags_are_bounded_and_deduplicated():
    assert clean_tags([" a ", "b", "a"]) == ["a", "b"]
    with pytest.raises(InvalidChange):
        clean_tags(["x" * 101])
    with pytest.raises(InvalidChange):
        clean_tags([f"t{i}" for i in range(51)])

"""gateway.addresses, the one address reader: its forms, its bound, the envelope, and the claim that lets it skip
the standard reading for simple forms (the stdlib reads exactly our address for every one of them)."""

from __future__ import annotations

import itertools

import pytest

from gateway import addresses as A
from gateway.autoreply import classify
from gateway.mime import parse_mail


def _std(entry: str) -> set[str] | None:
    return A._standard(entry)


NAMES = ["", "Alice", "Alice Q. Public", "Jörg Müller", '"Smith, John"', '"victim@corp.example <v@corp.example>"',
         "=?utf-8?q?=3Cv@corp.example=3E?=", '"a (b) c"', "O'Brien", "=?utf-8?b?SsO2cmc=?="]
ADDRS = ["alice@example.com", "a.b+tag@sub.example.org", "jörg@bücher.example", "x_y@foo-bar.example",
         "o'brien@ie.example"]


def test_simple_forms_are_read_the_same_by_the_standard_reading():
    """The fast path: every entry _SIMPLE accepts has exactly our address in the stdlib's reading."""
    checked = 0
    for name, addr in itertools.product(NAMES, ADDRS):
        for entry in (f"{name} <{addr}>", f"{name}<{addr}>", f"  {name}  < {addr} > ", addr, f" {addr} "):
            if not A._SIMPLE.fullmatch(entry):
                continue
            box = A._entry(entry.strip(), A._plain)
            assert box.addr == A.normalise(addr), entry
            assert _std(entry.strip()) == {box.addr}, entry
            checked += 1
    assert checked > 150


@pytest.mark.parametrize("entry", [
    '"v@corp.example <v@corp.example>" <a@evil.example>', "(v@corp.example) a@evil.example",
    "a@evil.example (<v@corp.example>)", "=?utf-8?q?=3Cv@corp.example=3E?= <a@evil.example>",
])
def test_tricks_are_not_simple_but_agree(entry):
    box = A._entry(entry, A._plain)
    assert box.addr == "a@evil.example" and A._conflict("From", entry, box) is None


def test_conflicts_are_named():
    lst = A.read_list(["v@corp.example <a@evil.example>, ok@fine.example"], "Cc")
    assert [a for _, a in lst.addresses] == ["a@evil.example", "ok@fine.example"]
    assert lst.conflicts == ["Cc 'v@corp.example <a@evil.example>' reads as a@evil.example here but as "
                             "v@corp.example by the standard RFC 5322 reading"]


def test_list_bound_reads_the_first_entries_only():
    value = ", ".join(f"p{i}@x.example" for i in range(5000))
    lst = A.read_list([value, "late@x.example"], "Cc", limit=1000)
    assert len(lst.addresses) == 1000 and lst.addresses[-1] == ("", "p999@x.example") and lst.more


def test_several_values_share_the_bound():
    lst = A.read_list(["a@x.example, b@x.example", "c@x.example"], "To", limit=2)
    assert [a for _, a in lst.addresses] == ["a@x.example", "b@x.example"] and lst.more


@pytest.mark.parametrize("values, addr, problem, ambiguous", [
    (["Alice <alice@example.com.>"], "alice@example.com", None, None),          # trailing dot read
    (["<>, Alice <alice@example.com>"], "alice@example.com", None, None),       # <> first ignored
    (["<>"], None, "From is the null address <>", None),
    (["John Smith john@example.com"], None, "From address is malformed: John Smith john@example.com", None),
    (["Müller, Hans <hans@example.com>"], "hans@example.com", None, None),
    (["a@x.example", "b@x.example"], None, "2 From headers", "the mail has 2 From headers"),
    (["a@x.example, b@x.example"], None, "From has 2 addresses", "From names 2 authors"),
    (["v@corp.example (v@corp.example) <a@evil.example>"], "a@evil.example", None, "by the standard RFC 5322"),
    ([], None, "no From header", None),
])
def test_author(values, addr, problem, ambiguous):
    au = A.read_author(values)
    assert au.addr == addr and au.problem == problem
    assert (au.ambiguous is None) if ambiguous is None else (ambiguous in (au.ambiguous or ""))


def test_name_of_a_comma_split_author():
    assert A.read_author(["Müller, Hans <hans@example.com>"]).name == "Müller, Hans"


@pytest.mark.parametrize("value, addr", [
    ("<Alice@Example.COM>", "alice@example.com"), ("alice@example.com.", "alice@example.com"),
    ("<>", None), ("", None), (None, None), ("<a@b@c.example>", None), ("<user@xn--bcher-kva.example>",
                                                                       "user@bücher.example"),
])
def test_envelope(value, addr):
    assert A.read_envelope(value) == addr


def test_null_first_in_from_is_not_an_auto_reply():
    """Issue 16 class 2: '<>' first in the From list made the mail look like an auto-reply (dropped)."""
    raw = b"From: <>, Alice <alice@example.com>\r\nTo: s@example.com\r\nSubject: help\r\n\r\nmy printer\r\n"
    pm = parse_mail(raw)
    assert pm.from_addr == "alice@example.com" and pm.ambiguous is None
    assert classify(pm.message, envelope_from="alice@example.com", from_addr=pm.from_addr) is None
    only_null = parse_mail(raw.replace(b"<>, Alice <alice@example.com>", b"<>"))
    verdict = classify(only_null.message, envelope_from="x@example.com", from_addr=only_null.from_addr)
    assert verdict is not None and verdict.kind == "auto_reply"


def test_a_null_address_in_a_quoted_name_is_no_null_from():
    pm = parse_mail(b'From: "Alice <>" <alice@example.com>\r\nSubject: x\r\n\r\nhello\r\n')
    assert pm.from_addr == "alice@example.com"
    assert classify(pm.message, envelope_from="alice@example.com", from_addr=pm.from_addr) is None

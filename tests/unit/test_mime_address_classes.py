"""The address regex of gateway.mime spells its non-ASCII ranges as negated classes (fast to compile at start-up):
the same character sets as the plain ranges, for every code point."""

from __future__ import annotations

import re

from gateway import addresses

PLAIN = {
    "_ATEXT_CLASS": r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]",
    "_LABEL_END": r"[A-Za-z0-9_\u0080-\U0010ffff]",
    "_LABEL_INSIDE": r"[A-Za-z0-9_\-\u0080-\U0010ffff]",
}


def test_negated_classes_are_the_plain_ranges_for_every_code_point():
    for name, plain in PLAIN.items():
        fast = re.compile(getattr(addresses, name.lstrip("_")) + "+")
        want = re.compile(plain + "+")
        # every code point, 4096 at a time: a run of members matches whole, a non-member stops it
        for base in range(0, 0x110000, 4096):
            chars = [chr(c) for c in range(base, min(base + 4096, 0x110000))]
            got = [bool(fast.fullmatch(ch)) for ch in chars]
            assert got == [bool(want.fullmatch(ch)) for ch in chars], (name, hex(base))


def test_addresses_still_parse_as_before():
    ok = ["alice@customer.example", "ä.ö@üñí.example", "x_y@foo_bar.example", '"q u"@x.example', "a@[1.2.3.4]",
          "o'brien+tag@mail-1.example", "é!#$%&*+/=?^`{|}~@x-y.z-w"]
    for addr in ok:
        assert addresses.ADDR_SPEC.fullmatch(addr), addr
    for addr in ["a..b@c.example", "a@b-.example", "a@-b.example", "@x.example", "a@", "a b@c.example"]:
        assert not addresses.ADDR_SPEC.fullmatch(addr), addr

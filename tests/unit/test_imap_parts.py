"""The IMAP package's pure parts: UID sets, the server's COPYUID answer (bounded: it is the server's text), the
service loop's backoff, and which order the drain takes."""

from __future__ import annotations

import pytest

from gateway.imap.account import ImapAccount
from gateway.imap.loop import Backoff
from gateway.imap.mailbox import MAX_SET, expand_set, parse_copyuid, uid_set


def test_uid_set_compacts_runs() -> None:
    assert uid_set([]) == ""
    assert uid_set([7]) == "7"
    assert uid_set([1, 2, 3, 7, 9, 10]) == "1:3,7,9:10"


def test_expand_set_reads_ranges_both_ways() -> None:
    assert expand_set("1:3,7") == [1, 2, 3, 7]
    assert expand_set("5:3") == [5, 4, 3]


def test_copyuid_maps_source_to_destination() -> None:
    assert parse_copyuid(b"38505 304,319:320 3956:3958") == {304: (38505, 3956), 319: (38505, 3957),
                                                             320: (38505, 3958)}
    assert parse_copyuid("1 1:2 5") == {}  # sets of different lengths: nothing is believed
    assert parse_copyuid("x 1 2") == {} and parse_copyuid("1 2") == {}


def test_a_huge_copyuid_set_is_refused_not_expanded() -> None:
    # a server's answer naming four billion UIDs would take all memory; it is ignored (the mail stays put)
    assert parse_copyuid(b"1 1:4294967295 1:4294967295") == {}
    with pytest.raises(ValueError):
        expand_set(f"1:{MAX_SET + 5}")
    assert len(expand_set(f"1:{MAX_SET}")) == MAX_SET


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    b = Backoff(1.0, 5.0)
    assert [b.next() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    b.reset()
    assert b.next() == 1.0


def test_refile_is_needed_only_with_a_quarantine_folder_of_its_own() -> None:
    base = {"name": "a", "host": "h", "user": "u"}
    assert ImapAccount.from_config(base).needs_refile
    assert not ImapAccount.from_config({**base, "quarantine_folder": ""}).needs_refile
    assert not ImapAccount.from_config({**base, "quarantine_folder": "Processed"}).needs_refile
    assert not ImapAccount.from_config({**base, "processed_folder": ""}).needs_refile

"""Intake._retrying: a deadlock or serialization failure that PostgreSQL reports (the transaction lost against
another instance's) runs the batch again at once; it is not "the store is unavailable", which leaves the batch
to the pending sweep (serve.pending_sweep_seconds, 60 s: bench_scaleout saw batches wait that long)."""

from __future__ import annotations

from types import SimpleNamespace

import psycopg.errors
import pytest
from sqlalchemy.exc import OperationalError

from gateway.db import StoreUnavailable, is_conflict
from gateway.intake import Intake


def failing(times: int, orig: Exception):
    calls = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise OperationalError("UPDATE tickets ...", {}, orig)
        return "threaded"

    return fn, calls


@pytest.mark.parametrize("orig", [psycopg.errors.DeadlockDetected(), psycopg.errors.SerializationFailure()])
def test_a_conflict_runs_again(orig: Exception) -> None:
    intake = Intake(SimpleNamespace(handlers=[]))
    fn, calls = failing(2, orig)
    assert intake._retrying(fn, "2 mails from 1") == "threaded" and len(calls) == 3
    assert is_conflict(OperationalError("x", {}, orig))


def test_a_conflict_every_time_and_an_outage_are_unavailable() -> None:
    intake = Intake(SimpleNamespace(handlers=[]))
    fn, calls = failing(10, psycopg.errors.DeadlockDetected())
    with pytest.raises(StoreUnavailable):
        intake._retrying(fn, "mail 1")
    assert len(calls) == 5  # bounded
    fn, calls = failing(1, psycopg.errors.AdminShutdown())
    with pytest.raises(StoreUnavailable):
        intake._retrying(fn, "mail 1")
    assert len(calls) == 1 and not is_conflict(OperationalError("x", {}, psycopg.errors.AdminShutdown()))

"""SLA sweep benchmark (not a test): 100,000 open tickets, 1 % of them due, one sweep on SQLite and PostgreSQL.

    .venv/bin/python bench/bench_sla.py [--tickets 100000] [--due-percent 1] [--only sqlite|postgresql]

The tickets, their SLA clocks and one policy are bulk-inserted directly (no listeners); of the due 1 %, nine
in ten have an escalation due (half warnings, half breaches; each queues one real outbox mail to the policy's
escalation address) and one in ten is a pending ticket whose reminder is due (back to open, mail to the
assignee). Prints the query plans of the sweep's two selections (index use) and the time of one sweep.
PostgreSQL: TG_PG_URL (default postgresql+psycopg://postgres@127.0.0.1:5432/postgres); a scratch database is
created and dropped. Target: < 1 s per sweep.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select, text  # noqa: E402

from gateway.app import App, build_app  # noqa: E402
from gateway.config import validate  # noqa: E402
from gateway.db import make_engine, transaction  # noqa: E402
from gateway.migrate import upgrade  # noqa: E402
from gateway.models import Contact, Counter, OutboxMail, SlaClock, SlaEscalation, Ticket, table_of  # noqa: E402
from gateway.sla.store import PolicyStore  # noqa: E402
from gateway.sla.sweep import due_clocks_query, due_reminders_query, sweep  # noqa: E402
from gateway.sla_definitions import validate_values  # noqa: E402

NOW = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
PG_ADMIN = os.environ.get("TG_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def populate(app: App, n: int, due_percent: float) -> tuple[int, int]:
    rnd = random.Random(5)
    n_due = int(n * due_percent / 100)
    n_remind = n_due // 10
    n_esc = n_due - n_remind
    with transaction(app.sessions) as s:
        PolicyStore(s, app.clock).add(validate_values("bench", response=60, resolution=1440,
                                                      escalate_to=["lead@example.com"], notify_assignee=False))
        rep = Contact(email="customer@example.org", name="C", role="customer", auto_registered=False,
                      undeliverable=False, created_at=NOW)
        bob = Contact(email="bob@example.com", name="Bob", role="staff", auto_registered=False,
                      undeliverable=False, created_at=NOW)
        s.add_all([rep, bob])
        s.flush()
        rep_id, bob_id = rep.id, bob.id
    due_ids = set(rnd.sample(range(1, n + 1), n_due))
    remind_ids = set(list(due_ids)[:n_remind])
    tickets: list[dict[str, Any]] = []
    clocks: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        created = NOW - timedelta(minutes=rnd.randint(1, 60 * 24 * 30))
        status: str = "open"
        remind_at: datetime | None = None
        paused: datetime | None = None
        if i in remind_ids:
            status, remind_at, paused = "pending", NOW - timedelta(minutes=rnd.randint(1, 600)), created
        elif i % 20 == 0 and i not in due_ids:  # other pending tickets, reminders in the future
            status, remind_at, paused = "pending", NOW + timedelta(hours=rnd.randint(1, 500)), created
        next_at: datetime | None
        if i in due_ids and i not in remind_ids:
            if i % 2:  # warning due
                resp_due = NOW + timedelta(minutes=rnd.randint(1, 10))
                warn = NOW - timedelta(minutes=rnd.randint(0, 5))
            else:  # breach due
                resp_due = NOW - timedelta(minutes=rnd.randint(1, 300))
                warn = resp_due - timedelta(minutes=12)
            next_at = min(warn, resp_due)
        else:
            resp_due = NOW + timedelta(minutes=rnd.randint(120, 60 * 24 * 20))
            warn = resp_due - timedelta(minutes=12)
            next_at = None if paused else warn
        reso_due = resp_due + timedelta(days=1)
        tickets.append(dict(id=i, number=i, subject=f"Ticket {i}", status=status, priority="medium", type="incident",
                            reporter_id=rep_id, sender_email="customer@example.org",
                            assignee_id=bob_id if i in remind_ids else None, tags=[], description="",
                            description_full="", created_at=created, updated_at=created, sla_policy="bench",
                            response_due_at=resp_due, resolution_due_at=reso_due, sla_paused_at=paused,
                            remind_at=remind_at))
        clocks.append(dict(ticket_id=i, warn_response_at=warn, warn_resolution_at=reso_due - timedelta(hours=4),
                           next_at=next_at, updated_at=NOW))
    with app.engine.begin() as conn:
        for k in range(0, n, 10_000):
            conn.execute(insert(table_of(Ticket)), tickets[k:k + 10_000])
        for k in range(0, n, 10_000):
            conn.execute(insert(table_of(SlaClock)), clocks[k:k + 10_000])
        conn.execute(table_of(Counter).update().where(Counter.name == "ticket").values(value=n))
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('tickets', 'id'), {int(n)})")
    with app.engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()
    return n_esc, n_remind


def plans(app: App) -> None:
    dialect = app.engine.dialect
    for title, q in (("escalations due", due_clocks_query(NOW, 500)),
                     ("pending reminders due", due_reminders_query(NOW, 500))):
        sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        with app.engine.connect() as conn:
            if dialect.name == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql).all()
                lines = [r[-1] for r in rows]
            else:
                rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) " + sql).all()
                lines = [r[0] for r in rows]
        print(f"  plan, {title}:")
        print("    " + " ".join(sql.split()))
        for line in lines:
            print(f"      {line}")


class PgAdmin(TypedDict):
    host: str | None
    port: int
    user: str | None
    password: str | None
    dbname: str
    autocommit: bool


def _pg_admin(u: URL) -> PgAdmin:
    return PgAdmin(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                   dbname=u.database or "postgres", autocommit=True)


def run(backend: str, n: int, due_percent: float, mail: bool) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sla-"))
    pg_name = None
    if backend == "sqlite":
        url = f"sqlite:///{tmp / 'gateway.db'}"
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        u = make_url(PG_ADMIN)
        pg_name = f"bench_sla_{uuid.uuid4().hex[:8]}"
        admin = _pg_admin(u)
        with psycopg.connect(**admin) as c:
            c.execute(f'CREATE DATABASE "{pg_name}"')
        url = u.set(database=pg_name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    config = validate({"gateway": {"data_dir": str(tmp), "addresses": ["support@example.com"]},
                       "database": {"url": url}, "outbound": {"reply_secret": "b" * 32, "enabled": mail}})
    app = build_app(config, clock=lambda: NOW)
    try:
        t0 = time.perf_counter()
        n_esc, n_remind = populate(app, n, due_percent)
        print(f"\n== {backend}, {'with' if mail else 'WITHOUT'} escalation mails: {n:,} tickets ({n_esc:,} with an "
              f"escalation due, {n_remind:,} pending reminders due), inserted in {time.perf_counter() - t0:.1f} s")
        plans(app)
        t0 = time.perf_counter()
        if os.environ.get("BENCH_PROFILE"):
            import cProfile
            import pstats

            prof = cProfile.Profile()
            result = prof.runcall(sweep, app, NOW)
            pstats.Stats(prof).sort_stats("cumulative").print_stats(40)
        else:
            result = sweep(app, NOW)
        took = time.perf_counter() - t0
        with app.sessions() as s:
            mails = s.scalar(select(text("count(*)")).select_from(OutboxMail.__table__)
                             .where(text("event LIKE 'sla_%'")))
            esc = s.scalar(select(text("count(*)")).select_from(SlaEscalation.__table__))
        print(f"  one sweep: {took * 1000:.0f} ms -- {len(result.escalations):,} escalations, "
              f"{len(result.reminders):,} reminders, {len(result.suppressed):,} suppressed; {esc:,} claim rows, "
              f"{mails:,} outbox mails queued  [{'OK' if took < 1 else 'SLOW'}: target < 1 s]")
        assert len(result.escalations) == n_esc and len(result.reminders) == n_remind, result.summary()
        t0 = time.perf_counter()
        again = sweep(app, NOW)
        print(f"  second sweep (nothing due): {(time.perf_counter() - t0) * 1000:.1f} ms, "
              f"{len(again.escalations)} escalations")
        return took
    finally:
        app.close()
        if pg_name:
            import psycopg

            with psycopg.connect(**admin) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tickets", type=int, default=100_000)
    ap.add_argument("--due-percent", type=float, default=1.0)
    ap.add_argument("--only", choices=("sqlite", "postgresql"))
    ap.add_argument("--mail", choices=("both", "yes", "no"), default="both",
                    help="queue the escalation mails through the real outbox (yes), or only the SLA work: "
                    "selection, claims, clocks, reminders (no; outbound.enabled = false)")
    args = ap.parse_args()
    modes = {"both": (False, True), "yes": (True,), "no": (False,)}[args.mail]
    for backend in ("sqlite", "postgresql"):
        if args.only in (None, backend):
            for mail in modes:
                run(backend, args.tickets, args.due_percent, mail)
    return 0


if __name__ == "__main__":
    sys.exit(main())

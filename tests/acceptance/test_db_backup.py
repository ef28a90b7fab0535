"""`ticket-gateway db backup FILE`: an online, consistent copy of the SQLite database; advice for PostgreSQL."""

from __future__ import annotations

import sqlite3

from conftest import new_sqlite_database, run_cli, write_config
from mails import make_mail


def test_backup_while_a_writer_holds_the_lock(tmp_path) -> None:
    url = new_sqlite_database(tmp_path / "var" / "gateway.db")
    cfg = write_config(tmp_path, url)
    for i in range(3):
        assert run_cli("ingest", config=cfg, input=make_mail(subject=f"mail {i}")).returncode == 0
    db = tmp_path / "var" / "gateway.db"
    writer = sqlite3.connect(db, isolation_level=None, timeout=5)
    writer.execute("BEGIN IMMEDIATE")  # the gateway in the middle of a write transaction
    writer.execute("UPDATE tickets SET subject = 'not committed' WHERE number = 1")
    try:
        out = tmp_path / "backup.db"
        p = run_cli("db", "backup", str(out), config=cfg)
        assert p.returncode == 0, p.stderr
        assert b"3 tickets" in p.stdout
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # one self-contained file
    assert sorted(r[0] for r in copy.execute("SELECT subject FROM tickets")) == ["mail 0", "mail 1", "mail 2"]
    copy.close()
    # the copy is a database the gateway opens
    (tmp_path / "restored").mkdir()
    cfg2 = write_config(tmp_path / "restored", f"sqlite:///{out}")
    listed = run_cli("tickets", "list", config=cfg2)
    assert listed.returncode == 0 and listed.stdout.count(b"mail ") == 3, listed.stdout + listed.stderr
    # an existing file is kept unless --force
    again = run_cli("db", "backup", str(out), config=cfg)
    assert again.returncode == 64 and b"--force" in again.stderr
    assert run_cli("db", "backup", "--force", str(out), config=cfg).returncode == 0
    assert not list(tmp_path.glob(".backup.db.partial"))


def test_backup_of_postgresql_gives_pg_dump_advice(tmp_path) -> None:
    cfg = write_config(tmp_path, "postgresql+psycopg://gateway:s3cret@db.example.com/gateway")
    out = tmp_path / "backup.db"
    p = run_cli("db", "backup", str(out), config=cfg)
    assert p.returncode == 64
    assert b"pg_dump --format=custom" in p.stderr and b"postgresql://gateway:***@db.example.com/gateway" in p.stderr
    assert b"s3cret" not in p.stderr
    assert not out.exists()

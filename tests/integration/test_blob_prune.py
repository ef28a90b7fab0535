"""Orphaned attachment blobs (gateway.blobprune): the preparation worker stores a mail's attachments before the
pipeline decides, so a mail that keeps nothing (here an auto-reply, ignored, and a mail quarantined by its
sender's block) leaves blobs nothing refers to. `db prune-attachments` (and serve's job) removes those once
they were not written for [attachments] prune_grace_hours, and never a blob an attachment row names, nor one
written within the grace period."""

from __future__ import annotations

import os

from conftest import run_cli, write_config
from mails import make_mail
from sqlalchemy import select

from gateway.app import build_app
from gateway.blobprune import Pruner
from gateway.config import load
from gateway.db import transaction
from gateway.engine import Engine, start_worker
from gateway.envelope import Envelope
from gateway.models import Attachment
from gateway.tickets import Directory

ENV = Envelope(mail_from="alice@customer.example", rcpt_tos=("support@example.com",), source="smtp")


def with_file(name: str, data: bytes, **kw) -> bytes:
    return make_mail(attachments=[(name, "application/octet-stream", data)], **kw)


def test_orphans_go_referenced_and_recent_blobs_stay(tmp_path, sqlite_url) -> None:
    cfg = write_config(tmp_path, sqlite_url)
    config = load(cfg)
    app = build_app(config)
    app.ahead = start_worker(config, context="exec")
    try:
        with transaction(app.sessions) as s:
            Directory(s, app.clock).add_contact("mallory@customer.example").blocked = True
        intake = app.intake()
        ids = intake.store_many([
            (with_file("kept.bin", b"kept " * 100), ENV),
            (with_file("auto.bin", b"auto-reply " * 100, headers={"Auto-Submitted": "auto-replied"}), ENV),
            (with_file("blocked.bin", b"blocked " * 100, sender="mallory@customer.example"), ENV),
        ])
        results = Engine(app, intake).thread(ids)
        assert [r.outcome for r in results] == ["ticket", "ignored", "quarantined"]
        with app.sessions() as s:
            kept = set(s.scalars(select(Attachment.sha256)))
        blobs = {p.name for p in config.attachments_dir.rglob("*") if p.is_file()}
        assert len(kept) == 1 and kept < blobs and len(blobs) == 3  # two orphans
        recent = app.blobs.put(b"written just now, its row not committed yet")

        done = Pruner(app.sessions, app.blobs, 3600.0).run()
        assert (done.looked, done.removed, done.recent) == (4, 0, 4)  # all written within the grace period
        for sha in blobs:
            os.utime(app.blobs.path_for(sha), (1_000_000_000, 1_000_000_000))  # long ago

        p = run_cli("db", "prune-attachments", config=cfg)
        assert p.returncode == 0, p.stderr
        assert p.stdout.decode().startswith("2 orphaned blob(s) removed; 4 looked at (1 in use, 1 written within")
        left = {p.name for p in config.attachments_dir.rglob("*") if p.is_file()}
        assert left == kept | {recent}
        [sha] = kept
        assert app.blobs.get(sha) == b"kept " * 100
    finally:
        app.ahead.close()
        app.close()


def test_a_run_is_bounded_and_the_next_one_goes_on(tmp_path, sqlite_url) -> None:
    app = build_app(load(write_config(tmp_path, sqlite_url)))
    try:
        shas = [app.blobs.put(f"orphan {i}".encode()) for i in range(30)]
        for sha in shas:
            os.utime(app.blobs.path_for(sha), (1_000_000_000, 1_000_000_000))
        pruner = Pruner(app.sessions, app.blobs, 3600.0)
        runs = []
        while (done := pruner.run(limit=7)).looked:
            runs.append(done.removed)
        assert all(n <= 7 for n in runs) and sum(runs) == 30 and len(runs) >= 5
        assert [p for p in app.blobs.root.rglob("*") if p.is_file()] == []
    finally:
        app.close()

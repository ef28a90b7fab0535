"""`ingest DIR` with the parse-ahead worker (gateway.prepare) gives what the one-process path gives: the same
outcomes, traces and rows for the whole shared corpus; a worker that dies costs time, never a mail."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import FIXED_NOW, Clock, corpus_root, write_config
from mails import make_mail, message_id_of
from sqlalchemy import create_engine, select

import gateway.app
import gateway.prepare
from gateway.cli import main
from gateway.models import Base

SKIP_NAMES = ("LICENSE", "README", "COPYING")
# random by design (uuid4 per notification round / Message-ID / signed token): compared by shape only
# (the reply token's secret is made per data directory)
RANDOM = {"outbox": {"batch", "token", "envelope_from"}}
_UUID = re.compile(r"tg\.[0-9a-f]{32}\.")


def _masked(v):
    return _UUID.sub("tg.UUID.", v) if isinstance(v, str) else v


def corpus_dir(dst: Path) -> Path:
    """Every corpus message as a flat folder, plus a few duplicates and replies to exercise every outcome."""
    dst.mkdir()
    files = sorted(p for p in corpus_root().rglob("*") if p.is_file() and not p.name.startswith(SKIP_NAMES)
                   and p.suffix != ".json")
    for i, f in enumerate(files):
        shutil.copyfile(f, dst / f"{i:04d}-{f.name}")
    first = make_mail(subject="printer", body="Printer on fire.\n")
    (dst / "9000-new.eml").write_bytes(first)
    (dst / "9001-reply.eml").write_bytes(make_mail(subject="Re: printer", in_reply_to=message_id_of(first),
                                                   body="Still burning.\n\n> Printer on fire.\n"))
    (dst / "9002-dup.eml").write_bytes(first)
    (dst / "9003-dup.eml").write_bytes((dst / f"0003-{files[3].name}").read_bytes())
    return dst


def run_ingest(tmp: Path, mails: Path, capsys, *extra: str) -> tuple[list[dict], dict[str, list[tuple]], set[str]]:
    cfg = write_config(tmp, "sqlite:///" + str(tmp / "var" / "gateway.db"))
    assert main(["--config", str(cfg), "ingest", "--json", "--batch", "50", *extra, str(mails)]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    for d in out:
        d["source"] = Path(d["source"]).name
    engine = create_engine("sqlite:///" + str(tmp / "var" / "gateway.db"))
    rows: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            skip = RANDOM.get(table.name, set())
            cols = [c for c in table.columns if c.name not in skip]
            got = []
            for r in conn.execute(select(*cols).order_by(*table.primary_key.columns)):
                got.append(tuple(Path(v).name if c.name == "source_ref" and v else _masked(v)
                                 for c, v in zip(cols, r, strict=True)))
            rows[table.name] = got
    engine.dispose()
    blobs = {p.name for p in (tmp / "var").rglob("*") if p.is_file() and len(p.name) == 64}
    return out, rows, blobs


@pytest.fixture
def fixed_clock(monkeypatch):
    monkeypatch.setattr(gateway.app, "build_app", functools.partial(gateway.app.build_app, clock=Clock(FIXED_NOW)))


def test_parse_ahead_gives_the_same_outcomes_traces_and_rows_as_one_process(tmp_path, capsys, fixed_clock,
                                                                           monkeypatch):
    mails = corpus_dir(tmp_path / "mails")
    prepared = []
    close = gateway.prepare.ParseAhead.close
    def recording_close(self):
        prepared.append(self.prepared)
        close(self)

    monkeypatch.setattr(gateway.prepare.ParseAhead, "close", recording_close)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    seq_out, seq_rows, seq_blobs = run_ingest(tmp_path / "a", mails, capsys, "--no-parse-ahead")
    par_out, par_rows, par_blobs = run_ingest(tmp_path / "b", mails, capsys)
    assert len(seq_out) == len(list(mails.iterdir())) > 600
    assert prepared == [len(seq_out)]  # the worker did every mail's pure work
    assert par_out == seq_out
    assert {d["outcome"] for d in seq_out} >= {"ticket", "comment", "duplicate", "ignored", "quarantined"}
    for name, rows in seq_rows.items():
        assert par_rows[name] == rows, name
    assert seq_rows["attachments"], "the corpus has attachments"
    referenced = {r[[c.name for c in Base.metadata.tables["attachments"].columns].index("sha256")]
                  for r in seq_rows["attachments"]}
    assert referenced <= seq_blobs and referenced <= par_blobs
    # the worker writes the blobs of mails that then keep nothing too (unreferenced, like a rolled-back one)
    assert seq_blobs <= par_blobs


def _dies_once_on_case_7(raw, *args):  # runs in the worker process
    marker = Path(os.environ["TG_TEST_MARKER"])
    if b"case 7\n" in raw or b"case 7\r\n" in raw:
        if os.environ.get("TG_TEST_ALWAYS") or not marker.exists():
            marker.write_text("died")
            os._exit(9)
    return _real_prepare_one(raw, *args)


_real_prepare_one = gateway.prepare.prepare_one


@pytest.mark.parametrize("always", [False, True])
def test_a_dying_worker_costs_time_not_mail(tmp_path, capsys, fixed_clock, monkeypatch, always):
    """The worker dies on one mail: a fresh worker prepares the rest, and the mail is tried once more; when the
    worker dies on it again, that mail is quarantined (never tried at every restart), every other is as without
    the worker."""
    mails = tmp_path / "mails"
    mails.mkdir()
    for i in range(40):
        (mails / f"{i:04d}.eml").write_bytes(make_mail(subject=f"case {i}", body=f"mail {i}\n",
                                                       sender=f"C {i} <c{i}@customer{i % 5}.example>"))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    seq_out, seq_rows, _ = run_ingest(tmp_path / "a", mails, capsys, "--no-parse-ahead")
    monkeypatch.setenv("TG_TEST_MARKER", str(tmp_path / "marker"))
    if always:
        monkeypatch.setenv("TG_TEST_ALWAYS", "1")
    monkeypatch.setattr(gateway.prepare, "prepare_one", _dies_once_on_case_7)
    par_out, par_rows, _ = run_ingest(tmp_path / "b", mails, capsys)
    assert (tmp_path / "marker").exists()
    assert len(par_out) == 40
    if not always:
        assert par_out == seq_out
        for name, rows in seq_rows.items():
            assert par_rows[name] == rows, name
        return
    crashed = par_out[7]
    assert crashed["source"] == "0007.eml" and crashed["outcome"] == "quarantined", crashed
    assert crashed["reason"] == "over budget: the mail crashed the preparation worker twice"
    assert [d["outcome"] for d in par_out[:7] + par_out[8:]] == ["ticket"] * 39
    assert [d["ticket"] for d in par_out[8:]] == [d["ticket"] - 1 for d in seq_out[8:]]


def _chunk_of_related_mails(dst: Path) -> list[str]:
    """Mails that name what earlier mails of the same chunk write (gateway.prefetch looks them all up before the
    first runs), with the outcome each must get."""
    dst.mkdir()
    alice, bob = "Alice <alice@customer.example>", "Bob <bob@elsewhere.example>"
    first = make_mail(sender=alice, subject="printer", body="Printer on fire.\n")
    carol = make_mail(sender="Carol <carol@third.example>", subject="vpn", body="VPN down.\n",
                      cc="Dave <dave@third.example>")
    erin = make_mail(sender="Erin <erin@fourth.example>", subject="mail", body="No mail.\n")
    mails = [
        (first, "ticket"),                                                              # #1
        (make_mail(sender=alice, subject="Re: printer", in_reply_to=message_id_of(first),
                   body="Still burning.\n"), "comment"),                              # its Message-ID, just written
        (make_mail(sender=bob, subject="[#1] me too", body="Mine too.\n"), "ticket"),   # #2: a stranger to #1
        (make_mail(sender=bob, subject="Re: [#2] me too", body="And now?\n"), "comment"),  # #2 made in this chunk
        (carol, "ticket"),                                                              # #3, Dave a watcher
        (make_mail(sender="Dave <dave@third.example>", subject="Re: vpn", in_reply_to=message_id_of(carol),
                   body="Same here.\n"), "comment"),                                  # Dave registered just now
        (first, "duplicate"),                                                           # rolls its savepoint back
        (make_mail(sender=alice, subject="Re: printer", references=message_id_of(first), body="Out.\n"), "comment"),
        (make_mail(sender="Carol <carol@third.example>", subject="vpn again", message_id=message_id_of(carol),
                   body="Other bytes, same Message-ID.\n"), "duplicate"),
        (erin, "ticket"),                                                               # #4
        (make_mail(sender="Erin <erin@fourth.example>", subject="Re: mail", in_reply_to=message_id_of(erin),
                   body="Still none.\n"), "comment"),
        (make_mail(sender="Frank <frank@fifth.example>", subject="[#99] unknown", body="Hi.\n"), "ticket"),  # #5
        (make_mail(sender="Frank <frank@fifth.example>", subject="Re: [#5] unknown", body="Hello?\n"), "comment"),
    ]
    for i, (raw, _) in enumerate(mails):
        (dst / f"{i:02d}.eml").write_bytes(raw)
    return [outcome for _, outcome in mails]


def test_lookups_made_ahead_for_a_chunk_see_what_its_earlier_mails_wrote(tmp_path, capsys, fixed_clock):
    """gateway.prefetch: the lookups of 16 mails at once, then each mail's handlers. A mail that names what an
    earlier mail of the same chunk wrote (its Message-ID, its ticket number, its registered sender or watcher,
    its dedupe claims) still finds it; outcomes and rows equal those of the one-process path, with fewer
    queries."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    expected = _chunk_of_related_mails(tmp_path / "mails")
    selects: list[int] = []

    def count(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("SELECT"):
            selects[-1] += 1

    event.listen(Engine, "before_cursor_execute", count)
    try:
        runs = {}
        for name, extra in (("seq", ("--no-parse-ahead",)), ("par", ())):
            (tmp_path / name).mkdir()
            selects.append(0)
            runs[name] = run_ingest(tmp_path / name, tmp_path / "mails", capsys, *extra)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    seq_out, seq_rows, _ = runs["seq"]
    par_out, par_rows, _ = runs["par"]
    assert [d["outcome"] for d in seq_out] == expected
    assert [d["ticket"] for d in seq_out] == [1, 1, 2, 2, 3, 3, None, 1, None, 4, 4, 5, 5]
    assert par_out == seq_out
    for name, rows in seq_rows.items():
        assert par_rows[name] == rows, name
    assert len(seq_rows["watchers"]) == 1 and len(seq_rows["ticket_links"]) == 1
    # the lookups were made ahead (until the first duplicate: a rollback forgets what is known absent)
    assert selects[1] <= selects[0] - 5, selects


def test_a_batch_begun_does_not_hold_the_worker_from_another_thread():
    """ParseAhead.begin hands a batch to the worker and returns; another thread's prepare meanwhile takes that
    batch's results from the worker (kept for its `results()`), then has its own batch prepared: it is not held
    up until the first caller comes back (the IMAP poller fetches meanwhile), and nobody gets another's results."""
    import threading

    ahead = gateway.prepare.ParseAhead(max_depth=10, max_parts=100, blob_root=None, budget=10.0)
    ahead.start()
    try:
        first = [make_mail(subject=f"first {i}") for i in range(3)]
        second = [make_mail(subject=f"second {i}") for i in range(2)]
        task = ahead.begin(first, [None] * 3)
        out: list = []
        other = threading.Thread(target=lambda: out.append(ahead.prepare(second, [None] * 2)))
        other.start()
        other.join(30)
        assert not other.is_alive()  # not held up by the batch begun and not yet collected
        assert [p.parsed.subject for p in out[0]] == ["second 0", "second 1"]
        assert [p.parsed.subject for p in task.results()] == ["first 0", "first 1", "first 2"]
        assert task.results() == task.results()  # taken once from the worker, kept
        assert [p.parsed.subject for p in ahead.prepare(first[:1], [None])] == ["first 0"]  # the worker goes on
    finally:
        ahead.close()

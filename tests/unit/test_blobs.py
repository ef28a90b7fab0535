from __future__ import annotations

import hashlib

import pytest

from gateway.blobs import BlobStore


def test_content_addressed_once(tmp_path):
    store = BlobStore(tmp_path / "att")
    sha = store.put(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    p = store.path_for(sha)
    assert p == tmp_path / "att" / sha[:2] / sha[2:4] / sha
    assert store.put(b"hello") == sha
    assert [x for x in (tmp_path / "att").rglob("*") if x.is_file()] == [p]
    assert store.get(sha) == b"hello"


@pytest.mark.parametrize("bad", ["../../etc/passwd", "g" * 64, "", "0" * 63, "A" * 64])
def test_paths_only_from_hashes(tmp_path, bad):
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path_for(bad)


def test_no_temporary_files_left(tmp_path):
    store = BlobStore(tmp_path)
    for i in range(20):
        store.put(bytes([i]) * 1000)
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def test_put_stream_stores_what_put_stores(tmp_path):
    """The same bytes in pieces: the same sha256 and path as put, stored once, the size counted."""
    data = bytes(range(256)) * 1000
    store = BlobStore(tmp_path / "att")
    pieces = [data[i:i + 777] for i in range(0, len(data), 777)]
    sha, size = store.put_stream(iter(pieces))
    assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
    assert store.get(sha) == data
    assert store.put(data) == sha and store.put_stream(iter(pieces)) == (sha, size)
    assert store.put_stream(iter([])) == (hashlib.sha256(b"").hexdigest(), 0)
    files = sorted(p for p in (tmp_path / "att").rglob("*") if p.is_file())
    assert files == sorted([store.path_for(sha), store.path_for(hashlib.sha256(b"").hexdigest())])


def test_put_stream_failing_source_leaves_nothing(tmp_path):
    def pieces():
        yield b"part one"
        raise ValueError("the source failed")

    store = BlobStore(tmp_path)
    with pytest.raises(ValueError):
        store.put_stream(pieces())
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_storing_content_again_renews_it(tmp_path):
    import os

    store = BlobStore(tmp_path)
    sha = store.put(b"again")
    os.utime(store.path_for(sha), (1000.0, 1000.0))
    store.put(b"again")
    assert store.path_for(sha).stat().st_mtime > 1000.0
    os.utime(store.path_for(sha), (1000.0, 1000.0))
    assert store.put_stream([b"ag", b"ain"]) == (sha, 5)  # a large attachment stored again, in pieces
    assert store.path_for(sha).stat().st_mtime > 1000.0
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [sha]  # its temporary file gone


def test_discard_removes_only_what_was_not_written_since(tmp_path):
    import os
    import time

    store = BlobStore(tmp_path)
    old, fresh = store.put(b"old"), store.put(b"fresh")
    os.utime(store.path_for(old), (1000.0, 1000.0))
    cutoff = time.time() - 3600
    assert store.discard(old, cutoff) is True and not store.exists(old)
    assert store.discard(fresh, cutoff) is False and store.get(fresh) == b"fresh"  # put back
    assert store.discard(old, cutoff) is False  # gone already
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [fresh]  # nothing left aside


def test_a_blob_stored_again_while_moved_aside_is_written_anew(tmp_path, monkeypatch):
    """`put` of the same content in the instant `discard` holds the blob aside: the blob is there afterwards."""
    import os

    store = BlobStore(tmp_path)
    sha = store.put(b"racy")
    os.utime(store.path_for(sha), (1000.0, 1000.0))
    real_rename = os.rename

    def rename_then_put(src, dst):
        real_rename(src, dst)
        assert store.put(b"racy") == sha  # finds no file: writes it anew

    monkeypatch.setattr(os, "rename", rename_then_put)
    assert store.discard(sha, 2000.0) is True  # the old copy went; the new one stays
    monkeypatch.setattr(os, "rename", real_rename)
    assert store.get(sha) == b"racy" and store.path_for(sha).stat().st_mtime > 2000.0


def test_listing_is_bounded_and_continues(tmp_path):
    store = BlobStore(tmp_path)
    shas = sorted(store.put(f"blob {i}".encode()) for i in range(400))
    first = int(shas[0][:2], 16)
    in_shard = [s for s in shas if int(s[:2], 16) == first]
    got = store.listing(first, "", 1)
    assert [s for s, _ in got] == in_shard[:1]
    rest = store.listing(first, got[0][0], 1000)
    assert [s for s, _ in rest] == in_shard[1:]
    assert sum(len(store.listing(k, "", 1000)) for k in range(256)) == 400
    assert store.listing(first, "", 0) == []

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

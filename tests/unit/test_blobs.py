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

"""Content-addressed file store: a blob lives at <root>/<sha[:2]>/<sha[2:4]>/<sha>.

Written as tmp + fsync + rename + fsync(dir), so a crash leaves either nothing or the whole file; the same
content twice is stored once. Paths come only from the hash, never from a name a sender chose.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        final = self.path_for(sha)
        if final.exists() and final.stat().st_size == len(data):
            return sha
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=".tmp-")
        _write(fd, tmp, [data])
        _move(tmp, final)
        return sha

    def put_stream(self, chunks: Iterable[bytes]) -> tuple[str, int]:
        """(sha256, size) of the bytes `chunks` yields, stored a chunk at a time: they are never whole in memory.
        They go to a temporary file at the root first (their path comes from the hash of all of them), which is
        dropped when that content is stored already."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
        digest = hashlib.sha256()
        size = 0

        def hashed() -> Iterator[bytes]:
            nonlocal size
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        _write(fd, tmp, hashed())
        sha = digest.hexdigest()
        final = self.path_for(sha)
        try:
            if final.exists() and final.stat().st_size == size:
                os.unlink(tmp)
                return sha, size
            final.parent.mkdir(parents=True, exist_ok=True)
        except BaseException:
            _unlink(tmp)
            raise
        _move(tmp, final)
        return sha, size

    def get(self, sha256: str) -> bytes:
        return self.path_for(sha256).read_bytes()

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).exists()


def _write(fd: int, tmp: str, chunks: Iterable[bytes]) -> None:
    """Write `chunks` to the new temporary file `tmp` (open as `fd`) and make them durable; on failure it is
    removed."""
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink(tmp)
        raise


def _move(tmp: str, final: Path) -> None:
    """The durable temporary file `tmp` becomes `final`, durably (tmp + fsync + rename + fsync(dir))."""
    try:
        os.replace(tmp, final)
    except BaseException:
        _unlink(tmp)
        raise
    dfd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

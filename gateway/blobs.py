"""Content-addressed file store: a blob lives at <root>/<sha[:2]>/<sha[2:4]>/<sha>.

Written as tmp + fsync + rename + fsync(dir), so a crash leaves either nothing or the whole file; the same
content twice is stored once. Paths come only from the hash, never from a name a sender chose.

A blob nothing refers to (written ahead for a mail that then kept nothing: a duplicate, an ignored, rejected
or quarantined mail; a rolled-back transaction) is removed by `gateway.blobprune` once it has not been written
for a grace period. Storing content that is there already renews its modification time (`put`), and
`discard` moves a blob aside before it looks at that time again, so a blob that is being stored again at that
moment is kept or written anew, never lost.
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
        try:
            if final.stat().st_size == len(data):
                os.utime(final)  # written again now: not an orphan (see discard)
                return sha
        except FileNotFoundError:  # not there, or moved aside by `discard` just now: written anew
            pass
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
            try:
                if final.stat().st_size == size:
                    os.utime(final)  # written again now: not an orphan (see discard)
                    os.unlink(tmp)
                    return sha, size
            except FileNotFoundError:  # not there, or moved aside by `discard` just now: written anew
                pass
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

    def listing(self, shard: int, after: str, limit: int) -> list[tuple[str, float]]:
        """(sha256, modification time) of at most `limit` blobs whose hash starts with the byte `shard` (0-255)
        and sorts after `after`, in order: a bounded look at one 256th of the store, continued from `after`."""
        out: list[tuple[str, float]] = []
        top = self.root / f"{shard:02x}"
        try:
            subdirs = sorted(e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for sub in subdirs:
            if (top.name + sub) < after[:4]:
                continue
            try:
                names = sorted(e.name for e in os.scandir(top / sub))
            except FileNotFoundError:
                continue
            for name in names:
                if len(out) >= limit:
                    return out
                if len(name) != 64 or name <= after or not name.startswith(top.name + sub):
                    continue
                try:
                    st = os.lstat(top / sub / name)
                except FileNotFoundError:
                    continue
                out.append((name, st.st_mtime))
        return out

    def discard(self, sha256: str, written_before: float) -> bool:
        """Remove a blob not written since `written_before` (a time.time()); whether it was removed. The caller
        knows nothing refers to it. The blob is first moved aside (an atomic rename in its directory), and its
        time looked at there: a `put` of the same content just before renewed it (it is put back), a `put` just
        after finds no file and writes it anew."""
        final = self.path_for(sha256)
        aside = final.with_name(f".discard-{sha256}-{os.getpid()}")
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            return False
        try:
            fresh = aside.stat().st_mtime >= written_before
        except BaseException:
            self._put_back(aside, final)
            raise
        if fresh:
            self._put_back(aside, final)
            return False
        os.unlink(aside)
        return True

    @staticmethod
    def _put_back(aside: Path, final: Path) -> None:
        """A blob moved aside goes back, unless it was written anew meanwhile (the same bytes: a link never
        replaces a file)."""
        try:
            os.link(aside, final)
        except FileExistsError:
            pass
        os.unlink(aside)

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

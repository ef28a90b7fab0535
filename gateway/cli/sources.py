"""What `ingest PATH ...` reads: message files, folders of them, Maildirs (with their Maildir++ subfolders)
and mboxes, each mail once, in a stable order, with the grand total known before the first mail (the progress
display counts across every PATH).

Every PATH is listed first (file names, the mbox's table of contents: no mail is read), then the mails are read
one at a time. A mail over `limits.max_message_size` is not read at all (a file's size is known from the file
system, an mbox message's from its table of contents): it is yielded with `raw=None` and its size, for the
caller to refuse; the source stays where it is.
"""

from __future__ import annotations

import mailbox
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


class Source(NamedTuple):
    source: str         # file | maildir | mbox
    ref: str            # the file, or mbox#key
    raw: bytes | None   # None: unreadable (size None) or over the size limit (size given)
    total: int          # mails in all PATHs together
    size: int | None = None


def is_maildir(p: Path) -> bool:
    return p.is_dir() and (p / "cur").is_dir() and (p / "new").is_dir()


def is_mbox(p: Path) -> bool:
    try:
        with p.open("rb") as f:
            return f.read(5) == b"From "
    except OSError:
        return False


def maildir_folders(root: Path) -> list[Path]:
    """The Maildir itself, then its Maildir++ subfolders (`.Folder`, `.Folder.Sub`: directories directly under
    the root whose names start with a dot and that are Maildirs themselves), by name."""
    subs = sorted(d for d in root.iterdir() if d.name.startswith(".") and d.name not in (".", "..") and is_maildir(d))
    return [root, *subs]


def _maildir_files(root: Path) -> list[Path]:
    # new/ and cur/ only: tmp/ holds mail still being written by its MTA
    return [f for folder in maildir_folders(root)
            for f in sorted(f for d in ("new", "cur") for f in (folder / d).iterdir() if f.is_file())]


@dataclass
class _Path:
    kind: str
    files: list[Path] = field(default_factory=list)
    box: mailbox.mbox | None = None
    keys: list[str] = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.keys) if self.box is not None else len(self.files)


def _list(arg: str) -> _Path:
    p = Path(arg)
    if is_maildir(p):
        return _Path("maildir", files=_maildir_files(p))
    if p.is_dir():
        return _Path("file", files=sorted(f for f in p.rglob("*") if f.is_file()))
    if is_mbox(p):
        box = mailbox.mbox(str(p), create=False)
        return _Path("mbox", box=box, keys=list(box.keys()), name=str(p))
    return _Path("file", files=[p])


def _mbox_size(box: mailbox.mbox, key: str) -> int | None:
    """An mbox message's size from the table of contents the listing built (None when it is not there)."""
    toc: Any = getattr(box, "_toc", None)  # the stdlib's (start, stop) offsets of each message
    try:
        start, stop = toc[key]
        return int(stop - start)
    except (KeyError, TypeError, ValueError):
        return None


def iter_sources(paths: list[str], max_size: int = sys.maxsize) -> Iterator[Source]:
    """Every mail of every PATH (see the module's text)."""
    listed = [_list(a) for a in paths]
    total = sum(len(x) for x in listed)
    try:
        for x in listed:
            if x.box is not None:
                for k in x.keys:
                    size = _mbox_size(x.box, k)
                    if size is not None and size > max_size:
                        yield Source("mbox", f"{x.name}#{k}", None, total, size)
                        continue
                    raw = x.box.get_bytes(k)
                    yield Source("mbox", f"{x.name}#{k}", None if len(raw) > max_size else raw, total, len(raw))
                continue
            for f in x.files:
                yield _file(x.kind, f, total, max_size)
    finally:
        for x in listed:
            if x.box is not None:
                x.box.close()


def _file(kind: str, f: Path, total: int, max_size: int) -> Source:
    try:
        size = f.stat().st_size
        if size > max_size:
            return Source(kind, str(f), None, total, size)
        raw = f.read_bytes()
        return Source(kind, str(f), None if len(raw) > max_size else raw, total, len(raw))
    except OSError:
        return Source(kind, str(f), None, total, None)

"""Orphaned attachment blobs: removed when nothing refers to them (serve's job `attachments-prune`, every
`[attachments] prune_minutes`; `ticket-gateway db prune-attachments`).

The preparation worker stores a mail's attachments before the pipeline decides (gateway.prepare), so a mail
that then keeps nothing (a duplicate, an ignored, rejected or quarantined mail, a rolled-back transaction)
leaves blobs no attachment row refers to. A blob is removed when no `attachments` row names its hash and it was
not written for `[attachments] prune_grace_hours`: a blob being stored for a mail threaded now was written (or
renewed, gateway.blobs.BlobStore.put) just before, and `BlobStore.discard` looks at that time again after moving
it aside. Bounded: a run looks at no more than its limit of blobs (the store in 256 parts, taken in turn and
continued where the last run stopped) and asks the database about them in chunks of CHUNK.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from gateway.blobs import BlobStore
from gateway.models import Attachment

if TYPE_CHECKING:
    from gateway.host import ServiceHost

log = logging.getLogger("gateway.blobprune")

RUN_LIMIT = 5000  # blobs looked at by one run of serve's job
CHUNK = 500       # hashes asked about in one query
SHARDS = 256


@dataclass
class Pruned:
    looked: int = 0    # blobs looked at
    removed: int = 0
    referenced: int = 0  # kept: an attachment row names it
    recent: int = 0      # kept: written within the grace period


class Pruner:
    """Walks the blob store a bounded run at a time, from where the last run stopped."""

    def __init__(self, sessions: Any, blobs: BlobStore, grace_seconds: float, *,
                 now: Callable[[], float] = time.time) -> None:
        self.sessions, self.blobs, self.grace, self.now = sessions, blobs, grace_seconds, now
        self.shard, self.after = 0, ""

    def run(self, limit: int = RUN_LIMIT) -> Pruned:
        """Look at up to `limit` blobs (and at each of the 256 parts of the store at most once); remove the
        orphans among them."""
        out = Pruned()
        cutoff = self.now() - self.grace
        parts = 0
        while out.looked < limit and parts < SHARDS:
            want = limit - out.looked
            found = self.blobs.listing(self.shard, self.after, want)
            out.looked += len(found)
            self._prune(found, cutoff, out)
            if len(found) < want:  # this part is done: on to the next one
                self.shard, self.after = (self.shard + 1) % SHARDS, ""
                parts += 1
            else:
                self.after = found[-1][0]
        if out.removed:
            log.info("attachments: removed %d orphaned blob(s) of %d looked at", out.removed, out.looked)
        return out

    def _prune(self, found: list[tuple[str, float]], cutoff: float, out: Pruned) -> None:
        old = [sha for sha, mtime in found if mtime < cutoff]
        out.recent += len(found) - len(old)
        for i in range(0, len(old), CHUNK):
            chunk = old[i:i + CHUNK]
            with self.sessions() as s:
                named = set(s.scalars(select(Attachment.sha256).where(Attachment.sha256.in_(chunk)).distinct()))
            out.referenced += len(named)
            for sha in chunk:
                if sha in named:
                    continue
                if self.blobs.discard(sha, cutoff):
                    out.removed += 1
                else:
                    out.recent += 1


def install_service(service: ServiceHost) -> None:
    """serve: the job `attachments-prune` every `[attachments] prune_minutes` (0: none)."""
    config = service.config
    minutes = config.values["attachments"]["prune_minutes"]
    if minutes <= 0:
        return
    app = service.app
    pruner = Pruner(app.sessions, BlobStore(config.attachments_dir),
                    config.values["attachments"]["prune_grace_hours"] * 3600.0)
    service.add_job("attachments-prune", pruner.run, minutes * 60)


__all__ = ["CHUNK", "Pruned", "Pruner", "RUN_LIMIT", "install_service"]

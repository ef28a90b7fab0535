"""Free space in the data directory: while it is below `limits.free_space_factor` times the largest mail
accepted, SMTP/LMTP answer MAIL FROM with '452 4.3.1', IMAP polling pauses and `ingest` answers 75 (try
again later); each goes on by itself once there is room again (the probe runs at every decision).

The probe is injectable (`DiskGuard(probe=...)`, or set `guard.probe`) so that tests can simulate a full disk.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config

log = logging.getLogger("gateway.diskspace")

INSUFFICIENT = "452 4.3.1 Insufficient system storage, please try again later"

Probe = Callable[[Path], int]


def free_bytes(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the file system holding `path`."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent  # the data directory may not exist yet: its parent's file system
    return int(shutil.disk_usage(p).free)


def needed(max_message_size: int, factor: float) -> int:
    return int(max_message_size * factor)


def low(free: int, need: int) -> bool:
    return free < need


class DiskGuard:
    def __init__(self, path: Path, need: int, probe: Probe = free_bytes) -> None:
        self.path = Path(path)
        self.need = need
        self.probe = probe
        self._was_low = False

    @classmethod
    def for_config(cls, config: Config, probe: Probe = free_bytes) -> DiskGuard:
        limits = config.values["limits"]
        return cls(config.data_dir, needed(limits["max_message_size"], limits["free_space_factor"]), probe)

    def low(self) -> bool:
        """True while the free space is below the need (logged once when it starts and once when it ends)."""
        if self.need <= 0:
            return False
        try:
            free = self.probe(self.path)
        except OSError as e:
            log.warning("cannot read the free space of %s: %s", self.path, e)
            return False
        now_low = low(free, self.need)
        if now_low != self._was_low:
            self._was_low = now_low
            if now_low:
                log.warning("free space in %s is %d bytes, below %d: intake paused", self.path, free, self.need)
            else:
                log.info("free space in %s is back (%d bytes): intake goes on", self.path, free)
        return now_low


__all__ = ["INSUFFICIENT", "DiskGuard", "free_bytes", "needed", "low"]

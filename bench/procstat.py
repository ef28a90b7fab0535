"""CPU seconds of processes from Linux /proc, for the benchmarks that report CPU per mail (bench_smtp, bench_imap)."""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (field 3 on)."""
    return Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()


def proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of a process (user + system; `children`: and of its children it reaped); 0.0 when gone."""
    try:
        f = _stat(pid)
    except OSError:
        return 0.0
    return sum(int(x) for x in f[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and all its descendants, live or reaped (serve and its worker; Dovecot's master,
    imap and auth processes)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                kids.setdefault(int(_stat(int(d))[1]), []).append(int(d))
            except (OSError, IndexError, ValueError):
                continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += proc_cpu(p, children=True)
        todo += kids.get(p, [])
    return total

"""CPU time of processes on this machine, from /proc (Linux), for CPU per operation."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads); None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / TICKS


def snapshot(pids: Iterable[int]) -> dict[int, float]:
    return {pid: s for pid in pids if (s := seconds(pid)) is not None}


def used(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU seconds used between the snapshots by the processes present in both."""
    common = before.keys() & after.keys()
    return sum(after[pid] - before[pid] for pid in common) if common else None

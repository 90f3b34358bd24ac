"""Processes on this machine, from /proc (Linux): CPU time for CPU per operation, resident
memory, process trees (a `tether serve --workers N` is its supervisor and N children), and
which process holds the connections to a port."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)": state is [0], ppid [1]."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads); None if unreadable."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def snapshot(pids: Iterable[int]) -> dict[int, float]:
    return {pid: s for pid in pids if (s := seconds(pid)) is not None}


def used(before: dict[int, float], after: dict[int, float]) -> float | None:
    """CPU seconds used between the snapshots by the processes present in both."""
    common = before.keys() & after.keys()
    return sum(after[pid] - before[pid] for pid in common) if common else None


def tree(pid: int) -> list[int]:
    """`pid` and all its live descendants. From every process's ppid: the kernel's
    /proc/<pid>/task/*/children needs CONFIG_PROC_CHILDREN, which not every kernel has."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) and fields[0] not in "ZX":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def rss_kib(pids: Iterable[int]) -> int:
    """Resident memory of the processes, summed (KiB)."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def _sockets(port: int, state: str) -> set[str]:
    """Inodes of the TCP sockets on local `port` in `state` (/proc/net/tcp: 01 established,
    0A listening), IPv4 and IPv6."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                inodes.add(fields[9])
    return inodes


def listeners(port: int) -> int:
    """How many sockets listen on `port` (one per `tether serve --workers` process)."""
    return len(_sockets(port, "0A"))


def connections(pids: Iterable[int], port: int) -> dict[int, int]:
    """How many established TCP connections to local `port` each process holds."""
    established = _sockets(port, "01")
    return {pid: sum(1 for inode in _socket_inodes(pid) if inode in established) for pid in pids}


def _socket_inodes(pid: int) -> list[str]:
    inodes = []
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return []
    for fd in fds:
        try:
            link = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            inodes.append(link[len("socket:[") : -1])
    return inodes


def machine_seconds() -> float | None:
    """CPU seconds the whole machine has been busy since boot (/proc/stat: user, nice,
    system, irq, softirq, steal), all cores together; None if unreadable."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in first[1:9])
    return (user + nice + system + irq + softirq + steal) / TICKS


def tree_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants, with those of their children that
    have exited and been waited for (a postmaster's ended backends, for one)."""
    total = 0.0
    for member in tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += sum(int(v) for v in fields[11:15]) / TICKS  # utime, stime, cutime, cstime
    return total


def own_seconds() -> float:
    """CPU seconds of this process and of its children that have exited and been waited for."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system

"""The usual process metrics, for the whole server: the master plus its live workers, read from /proc.

CPU time must not go backwards when a worker dies, so it is the live processes'
time plus what the kernel reports for children already reaped (RUSAGE_CHILDREN,
``os.times()``); memory and open descriptors are what the live processes hold
now. Off Linux (no /proc) only the CPU time and the start time are reported.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_IMPORTED = time.time()


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): fields 3 onwards."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def _boot_time() -> float | None:
    try:
        with open("/proc/stat", "rb") as handle:
            for line in handle:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def start_time(pid: int) -> float:
    """Seconds since the epoch when ``pid`` started (for process_start_time_seconds)."""
    fields = _stat_fields(pid)
    boot = _boot_time()
    if fields is None or boot is None:
        return _IMPORTED
    return boot + int(fields[19]) / _TICKS  # field 22: starttime, in clock ticks after boot


def read(pids: Iterable[int]) -> dict[str, float]:
    """process_* values for this process and ``pids`` (its live workers)."""
    own = os.getpid()
    times = os.times()
    cpu = times.user + times.system + times.children_user + times.children_system  # children: the reaped
    rss = 0
    fds = 0
    for pid in (own, *pids):
        fields = _stat_fields(pid)
        if fields is None:
            continue  # gone since the list was made; its CPU is in children_* once reaped
        if pid != own:
            cpu += (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
        rss += int(fields[21]) * _PAGE
        with contextlib.suppress(OSError):
            fds += len(os.listdir(f"/proc/{pid}/fd"))
    return {"process_cpu_seconds_total": cpu, "process_resident_memory_bytes": rss,
            "process_open_fds": fds, "process_start_time_seconds": start_time(own)}

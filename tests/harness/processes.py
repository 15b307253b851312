"""Process inspection through Linux /proc: worker pids, and leak checks of threads and descriptors."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def proc_threads(pid: int) -> int:
    """Threads of a process, from the Threads: line of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line for pid {pid}")


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_children(pid: int) -> set[int]:
    """Direct children of a process (all its threads' children)."""
    children: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            children.update(int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split())
    return children


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds_exact(pid: int) -> float:
    """CPU seconds a process's threads have run, to the nanosecond, from /proc/<pid>/task/*/schedstat.

    ``proc_cpu_seconds`` counts in clock ticks of 10 ms, which is a tenth of what some tests measure;
    the scheduler's own run time has no such step. It covers the threads alive when it is read, so a
    thread that exits between two readings takes its time with it: use it on a process whose threads
    stay, such as a server's worker threads and main thread.
    """
    seconds = 0.0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            seconds += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0]) / 1e9
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{task}"):
                continue  # the thread ended while the others were read
            raise  # no schedstat at all: a kernel without CONFIG_SCHED_INFO
    return seconds


def proc_rss(pid: int) -> int:
    """Resident memory of a process in bytes, from the VmRSS: line of /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS line for pid {pid}")

"""The counters themselves: rows of 64-bit cells in one shared memory mapping, one row per thread.

Layout: the mapping holds ``slots`` worker slots; a slot is one header cell (the
pid of the worker using it, 0 when free) and ``threads + 1`` rows (one per
serving thread, the last for the process's main thread), each ``layout.ROW``
cells. A row is written by its own thread only, so an increment needs no lock
and can lose nothing; the reader sums rows. The duration sum is a double, read
and written through a second view of the same memory.
"""

from __future__ import annotations

import mmap
import threading
from bisect import bisect_left
from collections.abc import Iterable

from .layout import (
    ACCEPTED,
    BUCKETS,
    BUSY_THREADS,
    BYTES_IN,
    BYTES_OUT,
    COUNTERS_END,
    DURATION,
    DURATION_SUM,
    IDLE_CONNECTIONS,
    METHOD_BASE,
    OPEN_CONNECTIONS,
    OTHER_BASE,
    PROTOCOL_ERRORS,
    REFUSED,
    ROW,
    STATUS_SLOT,
)

_CELL = 8  # bytes: int64 or double


class Recorder:
    """One thread's row: the few increments the transport makes, each a store into shared memory."""

    __slots__ = ("cells", "floats")

    def __init__(self, cells: memoryview, floats: memoryview) -> None:
        self.cells = cells  # this row's cells as int64
        self.floats = floats  # the same row as doubles (only DURATION_SUM is one)

    def request(self, method: str, status: int, seconds: float, sent: int) -> None:
        """A request answered by the application: its method, status, time taken and answer size."""
        cells = self.cells
        cells[METHOD_BASE.get(method, OTHER_BASE) + STATUS_SLOT[status]] += 1
        cells[DURATION + bisect_left(BUCKETS, seconds)] += 1
        self.floats[DURATION_SUM] += seconds
        cells[BYTES_OUT] += sent

    def received(self, size: int) -> None:
        self.cells[BYTES_IN] += size

    def accepted(self) -> None:
        self.cells[ACCEPTED] += 1

    def refused(self, sent: int) -> None:
        cells = self.cells
        cells[REFUSED] += 1
        cells[BYTES_OUT] += sent

    def protocol_error(self, status: int, sent: int) -> None:
        cells = self.cells
        cells[PROTOCOL_ERRORS + STATUS_SLOT[status]] += 1
        cells[BYTES_OUT] += sent

    def gauges(self, open_connections: int, idle_connections: int, busy_threads: int) -> None:
        """Sampled by the process's main thread (only its own row gets these)."""
        cells = self.cells
        cells[OPEN_CONNECTIONS] = open_connections
        cells[IDLE_CONNECTIONS] = idle_connections
        cells[BUSY_THREADS] = busy_threads


class Totals:
    """One reading of the whole server: counters summed (live workers plus retired ones), gauges of live ones."""

    __slots__ = ("cells", "duration_sum", "workers")

    def __init__(self, cells: list[int], duration_sum: float, workers: int) -> None:
        self.cells = cells
        self.duration_sum = duration_sum
        self.workers = workers


class SharedStore:
    """The mapping, the master's bookkeeping of which worker uses which slot, and the retired totals.

    Created before any fork: an anonymous MAP_SHARED mapping is inherited by
    every child, so the master and all workers see the same cells.
    """

    def __init__(self, slots: int, threads: int) -> None:
        self.slots = slots
        self.rows = threads + 1
        self._slot_cells = 1 + self.rows * ROW
        self._map = mmap.mmap(-1, slots * self._slot_cells * _CELL)  # shared and anonymous by default
        self._cells = memoryview(self._map).cast("q")
        self._floats = memoryview(self._map).cast("d")
        self._retired = [0] * COUNTERS_END
        self._retired_sum = 0.0
        self._pids: dict[int, int] = {}  # master: pid -> slot
        self._lock = threading.Lock()  # master: a fold and a reading never interleave
        self.mine: int | None = None  # the slot a worker (or the single process) writes to

    # -- master side --------------------------------------------------------------------------------------

    def claim(self) -> int | None:
        """A free slot for the worker about to be forked (None when all are in use)."""
        with self._lock:
            used = set(self._pids.values())
            for slot in range(self.slots):
                if slot not in used and self._cells[slot * self._slot_cells] == 0:
                    self._cells[slot * self._slot_cells] = -1  # taken, pid not known yet
                    self.mine = slot
                    return slot
        self.mine = None
        return None

    def assign(self, slot: int | None, pid: int) -> None:
        if slot is None:
            return
        with self._lock:
            self._cells[slot * self._slot_cells] = pid
            self._pids[pid] = slot

    def retire(self, pid: int) -> None:
        """A worker is gone: add its counters to the retired totals and free its slot.

        Its cells outlive it (the master maps them too), so even a worker killed
        by SIGKILL gives up everything it counted; only its gauges are dropped.
        """
        with self._lock:
            slot = self._pids.pop(pid, None)
            if slot is None:
                return
            retired = self._retired
            for start in self._row_starts(slot):
                row = self._cells[start:start + COUNTERS_END].tolist()
                for i, value in enumerate(row):
                    if value:
                        retired[i] += value
                self._retired_sum += self._floats[start + DURATION_SUM]
            base = slot * self._slot_cells
            self._map[base * _CELL:(base + self._slot_cells) * _CELL] = bytes(self._slot_cells * _CELL)

    def pids(self) -> list[int]:
        """Processes that hold a slot (the master's view)."""
        with self._lock:
            return list(self._pids)

    # -- worker side --------------------------------------------------------------------------------------

    def recorders(self) -> list[Recorder] | None:
        """This process's rows, one per serving thread and the main thread's last."""
        slot = self.mine
        if slot is None:
            return None
        return [Recorder(self._cells[start:start + ROW], self._floats[start:start + ROW])
                for start in self._row_starts(slot)]

    def use_alone(self, pid: int) -> None:
        """Single-process mode: slot 0 is this process's."""
        self.mine = 0
        self.assign(0, pid)

    # -- reading ------------------------------------------------------------------------------------------

    def totals(self) -> Totals:
        with self._lock:
            cells = list(self._retired) + [0] * (ROW - COUNTERS_END)
            duration_sum = self._retired_sum
            live = 0
            for slot in range(self.slots):
                if self._cells[slot * self._slot_cells] <= 0:
                    continue  # free, or claimed by a worker not forked yet
                live += 1
                for start in self._row_starts(slot):
                    row = self._cells[start:start + ROW].tolist()
                    cells = [a + b for a, b in zip(cells, row, strict=True)]
                    duration_sum += self._floats[start + DURATION_SUM]
            cells[DURATION_SUM] = 0  # the double's bits, summed as integers: meaningless
            return Totals(cells, duration_sum, live)

    def _row_starts(self, slot: int) -> Iterable[int]:
        base = slot * self._slot_cells + 1
        return range(base, base + self.rows * ROW, ROW)

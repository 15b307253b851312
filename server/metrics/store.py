"""The counters themselves: rows of 64-bit cells in one shared memory mapping, one row per thread.

Layout: the mapping holds ``slots`` worker slots; a slot is one header cell (the
pid of the worker using it, 0 when free) and ``threads + 1`` rows (one per
serving thread, the last for the process's main thread), each ``layout.ROW``
cells. Each thread counts in a plain list of its own (an increment there costs a
third of one into the mapping through a memoryview, measured with callgrind),
and its process's main thread copies the lists into their rows 4 times a second.
The reader sums rows. The duration sum is a double, read and written through a
second view of the same memory.
"""

from __future__ import annotations

import array
import mmap
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable

from .layout import (
    ACCEPTED,
    ACCESS_LOG_DROPPED,
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


assert BUCKETS[:3] == (0.0001, 0.00025, 0.0005)  # Recorder.request looks these up without bisect


class Recorder:
    """One thread's counts: plain integers in a list and attributes, which only that thread changes.

    Written for the instruction count (callgrind): a dict subscript instead of
    ``.get`` (a method call costs 4 times as much), the usual sub-millisecond
    durations bucketed by two comparisons instead of a bisect, and the byte
    counts as attributes, which the reactor adds to without a call.
    """

    __slots__ = ("bytes_in", "bytes_out", "counts", "duration_sum")

    def __init__(self) -> None:
        self.counts = [0] * ROW
        self.duration_sum = 0.0
        self.bytes_in = 0  # the transport adds what it reads straight here
        self.bytes_out = 0

    def request(self, method: str, status: int, seconds: float, sent: int) -> None:
        """A request answered by the application: its method, status, time taken and answer size."""
        counts = self.counts
        try:
            counts[METHOD_BASE[method] + STATUS_SLOT[status]] += 1
        except KeyError:
            counts[OTHER_BASE + STATUS_SLOT[status]] += 1
        if seconds <= 0.0005:
            counts[DURATION if seconds <= 0.0001 else DURATION + 1 if seconds <= 0.00025 else DURATION + 2] += 1
        else:
            counts[DURATION + bisect_left(BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.bytes_out += sent

    def accepted(self) -> None:
        self.counts[ACCEPTED] += 1

    def refused(self, sent: int) -> None:
        self.counts[REFUSED] += 1
        self.bytes_out += sent

    def protocol_error(self, status: int, sent: int) -> None:
        self.counts[PROTOCOL_ERRORS + STATUS_SLOT[status]] += 1
        self.bytes_out += sent


class ProcessRecorders:
    """A serving process's recorders (one per serving thread, then the main thread's) and their rows.

    ``publish`` copies every thread's counts into its row of the shared
    mapping; the process's main thread calls it 4 times a second and once more
    on its way out, so a scrape sees counts at most 0.25 s old.
    """

    def __init__(self, cells: memoryview[int], floats: memoryview[float], starts: Iterable[int]) -> None:
        self._cells = cells
        self._floats = floats
        self._starts = list(starts)
        self.threads = [Recorder() for _ in self._starts]
        # The access log's count of dropped lines (server.py sets it); read by the main thread as it publishes.
        self.access_log_dropped: Callable[[], int] = lambda: 0

    def publish(self, open_connections: int, idle_connections: int, busy_threads: int) -> None:
        main = self.threads[-1].counts
        main[ACCESS_LOG_DROPPED] = self.access_log_dropped()
        main[OPEN_CONNECTIONS] = open_connections
        main[IDLE_CONNECTIONS] = idle_connections
        main[BUSY_THREADS] = busy_threads
        for recorder, start in zip(self.threads, self._starts, strict=True):
            # One C-level copy of a list another thread is adding to. Each cell comes out as a value its
            # owner stored (with the GIL the whole row is one moment; without, cells may be from moments
            # apart, each still a count that was reached), so a scrape never sees a counter go back.
            row = array.array("q", recorder.counts)
            row[BYTES_IN] = recorder.bytes_in
            row[BYTES_OUT] = recorder.bytes_out
            self._cells[start:start + ROW] = row
            self._floats[start + DURATION_SUM] = recorder.duration_sum


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

    def recorders(self) -> ProcessRecorders | None:
        """This process's recorders, writing to its slot; None when it has none."""
        slot = self.mine
        if slot is None:
            return None
        return ProcessRecorders(self._cells, self._floats, self._row_starts(slot))

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

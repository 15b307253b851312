"""What a pre-forked worker and its master share: one small slot of memory per worker.

The master must notice a worker whose event loop is stuck (in C code, in a
deadlock, stopped), learn when a new worker is ready to serve, and hear when a
worker has served its ``--max-requests``. A pipe or a signal per event would
work, but the heartbeat is the frequent one and it should cost the worker
nothing it would notice: here it is a store of one double into memory the
master mapped before forking (``mmap`` of anonymous shared memory), no system
call at all. ``CLOCK_MONOTONIC`` is the same clock in every process, so the
master compares the worker's stamp with its own ``time.monotonic()``.

The heartbeat comes from the worker's main thread, the loop that also watches
the request threads (see reactor.py), never from a request thread: a slow
request only keeps a request thread busy, so it cannot stop the heartbeat, and
a worker whose main thread cannot run (the GIL held by C code, a SIGSTOP, a
deadlock that reaches the main loop) stops beating and is replaced.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import struct
from collections.abc import Callable

BOOTING, READY, RECYCLE = 0, 1, 2  # the worker's state, as the master reads it
EXIT_BOOT_FAILED = 3  # a worker that could not load the application exits with this

_LAYOUT = struct.Struct("=dI")  # last heartbeat (monotonic seconds), state


class WorkerSlot:
    """Created by the master before the fork; both sides keep their mapping of the same memory."""

    __slots__ = ("_beat", "_mem", "_state", "max_requests")

    def __init__(self, now: float, max_requests: int = 0) -> None:
        self._mem = mmap.mmap(-1, _LAYOUT.size)  # MAP_SHARED | MAP_ANONYMOUS: survives fork as shared
        # Each field is written and read as one item of a typed view: a single aligned store or load
        # (memoryview copies the item whole). struct.pack_into zero-fills its target before it writes,
        # so a reader in another process (the master), or in another thread without the GIL, could
        # see a heartbeat of 0.0 in between: seen on free-threaded 3.13 (tests/test_thread_stress.py).
        view = memoryview(self._mem)
        self._beat = view[0:8].cast("d")
        self._state = view[8:12].cast("I")
        self.max_requests = max_requests  # this worker's limit, jitter included; 0 for none
        self._beat[0] = now
        self._state[0] = BOOTING

    # -- the worker's side --------------------------------------------------------------------------------

    def beat(self, now: float) -> None:
        self._beat[0] = now

    def set_state(self, state: int, *, wake_master: bool = True) -> None:
        """Ready, or done with its requests: both mean the master has work, so wake it rather than wait for its tick.

        ``wake_master=False`` only records the state: a test standing in for a worker has no master to wake.
        """
        self._state[0] = state
        if wake_master:
            with contextlib.suppress(OSError):
                os.kill(os.getppid(), signal.SIGCHLD)  # the master's SIGCHLD handler only wakes its loop

    def ticker(self, served: Callable[[], int], orphaned: Callable[[], None]) -> Callable[[float], None]:
        """The hook the event loop's main thread calls each time round: beat, and ask to be recycled once.

        Once a second it also checks that the master is still its parent: a master killed with
        SIGKILL cannot stop its workers, which would otherwise serve on with nobody supervising.
        """
        limit = self.max_requests
        asked = False
        master = os.getppid()
        next_check = 0.0

        def tick(now: float) -> None:
            nonlocal asked, next_check
            self.beat(now)
            if limit and not asked and served() >= limit:
                asked = True
                self.set_state(RECYCLE)
            if now >= next_check:
                next_check = now + 1.0
                if os.getppid() != master:
                    orphaned()

        return tick

    # -- the master's side --------------------------------------------------------------------------------

    def read(self) -> tuple[float, int]:
        """(last heartbeat, state)."""
        beat, state = self._beat[0], self._state[0]
        return beat, state

    def close(self) -> None:
        self._beat.release()
        self._state.release()
        self._mem.close()

"""Worker threads that run the application, woken as sparingly as keeps the queue moving.

In CPython, every thread that is runnable at the same moment fights for the
GIL, and each hand-off is a context switch. Waking one thread per request
makes a fast application pay that on every request. So the event loop queues
work and wakes a single worker, which drains the queue; another worker is woken
only when all running ones have spent longer than ``stall`` on their current
call (a slow database query, a sleep), so slow calls still never hold up the
rest for more than that.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

Task = tuple[Callable[..., Any], tuple[Any, ...]]


class ThreadPool:
    def __init__(self, size: int, stall: float = 0.002, name: str = "worker") -> None:
        self.pending: collections.deque[Task] = collections.deque()
        self.stall = stall
        self._lock = threading.Lock()
        self._idle: list[threading.Lock] = []  # each parked worker waits on its own lock
        self._busy_since: dict[int, float] = {}  # worker index -> start of its current call
        self._active = 0
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, args=(i,), name=f"{name}-{i}", daemon=True)
                         for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Queue work; call ``kick`` once after a batch of submits."""
        self.pending.append((fn, args))

    def kick(self) -> None:
        """Wake a worker if none is running, or if every running one is stuck in a slow call."""
        if not self.pending:
            return
        with self._lock:
            if not self._idle:
                return
            if self._active:
                now = time.monotonic()
                stalled_before = now - self.stall
                if any(started > stalled_before for started in self._busy_since.values()):
                    return  # someone is making progress and will get to the queue
                if len(self._busy_since) < self._active:
                    return  # a worker is between calls and about to take the next one
            self._active += 1
            self._idle.pop().release()

    def _run(self, index: int) -> None:
        gate = threading.Lock()
        gate.acquire()
        pending = self.pending
        busy = self._busy_since
        with self._lock:
            self._active += 1
        while True:
            try:
                fn, args = pending.popleft()
            except IndexError:
                with self._lock:
                    if pending:
                        continue
                    if self._stopping:
                        self._active -= 1
                        return
                    self._active -= 1
                    self._idle.append(gate)
                gate.acquire()  # parked until kick() or shutdown() releases it
                continue
            busy[index] = time.monotonic()
            try:
                fn(*args)
            except Exception:  # a task must never kill its thread
                traceback.print_exc(file=sys.stderr)
            finally:
                del busy[index]

    def shutdown(self, timeout: float) -> bool:
        """Stop after the queued work; True when every thread finished within ``timeout``."""
        with self._lock:
            self._stopping = True
            idle, self._idle = self._idle, []
        for gate in idle:
            gate.release()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

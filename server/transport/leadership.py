"""Who leads: the poller, the thread that waits in it, the idle threads, and the backlog of ready work.

One worker thread at a time is the leader: it waits in the poller and handles what becomes ready
itself (reactor.py). The others wait at their seat's gate, each a lock that its thread acquires
to wait and that the thread promoting it releases; a gate is a one-way signal (a semaphore of one),
the only lock in the transport that two threads use in turn by design. Promotion happens when
the leader stalls inside one request (the main thread notices, monitor.py) or at shutdown.

Threads:

- ``leader`` and ``idle`` change only under ``lock``: a worker going idle, the main thread
  promoting one, the shutdown releasing them all.
- ``backlog`` is a deque of ``(fd, events)`` that the leader fills from the poller and takes from;
  any thread appends to it (``requeue``) and then wakes the leader. It relies on one documented
  guarantee, in this one place: ``collections.deque`` append and popleft are atomic, with or
  without the GIL (the free-threaded build locks each deque), so no lock is taken per event.
- The wake-up pipes are written by anyone and read by the leader (``_wake_r``) or the main
  thread (``main_r``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading

from ..metrics import Recorder
from .connection import Connection
from .poller import AnyPoller, Poller


class WorkerSeat:
    """One worker thread's place: its gate, when its current call began, the answers it holds, its count.

    ``busy_since`` and ``served`` are written only by the seat's own thread and read by the main
    thread (a float or int read whole, never torn); ``held`` is the batch writer's (batch.py).
    """

    __slots__ = ("busy_since", "gate", "held", "held_since", "served", "stats", "thread")

    def __init__(self, stats: Recorder | None) -> None:
        self.stats = stats  # this thread's metrics row, None when metrics are off
        self.gate = threading.Lock()
        self.gate.acquire()
        self.busy_since = 0.0  # non-zero while inside a request; read by the monitor
        self.served = 0  # requests this thread answered: --max-requests sums the seats
        self.thread: threading.Thread | None = None
        self.held: collections.deque[Connection] = collections.deque()
        self.held_since = 0.0


class Leadership:
    """The poller and the turn-taking around it; see the module docstring for the thread rules."""

    def __init__(self, seats: list[WorkerSeat]) -> None:
        self.poller: AnyPoller = Poller()
        self.seats = seats
        self.lock = threading.Lock()  # guards leader, idle and done
        self.leader: WorkerSeat | None = None
        self.idle: list[WorkerSeat] = []
        self.done = False  # set once, at the end of shutdown: every worker returns
        self.backlog: collections.deque[tuple[int, int]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()  # wakes the leader out of the poller
        self.main_r, self._main_w = os.pipe()  # wakes the main thread (signals, the first connection)
        for fd in (self._wake_r, self._wake_w, self.main_r, self._main_w):
            os.set_blocking(fd, False)
        self.poller.watch(self._wake_r)

    def begin(self) -> None:
        """The first seat leads; the rest are idle. Before any thread runs."""
        self.leader = self.seats[0]
        self.idle = self.seats[1:]
        self.seats[0].gate.release()

    def promote(self) -> bool:
        """Hand the poller to an idle worker (the current leader is stuck or leaving); False if none is idle."""
        with self.lock:
            if not self.idle or self.done:
                return False
            seat = self.idle.pop()
            self.leader = seat
        seat.gate.release()
        return True

    def step_down(self, seat: WorkerSeat) -> bool:
        """A demoted leader back among the idle; False when the server is done (the thread returns)."""
        with self.lock:
            if self.done:
                return False
            self.idle.append(seat)
            return True

    def finish(self) -> None:
        """Shutdown: no more leading; every idle worker is let through its gate to return."""
        with self.lock:
            self.done = True
            idle, self.idle = self.idle, []
        for seat in idle:
            seat.gate.release()
        self.wake_leader()

    def is_wake_pipe(self, fd: int) -> bool:
        if fd != self._wake_r:
            return False
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 4096)
        return True

    def requeue(self, conn: Connection) -> None:
        """Work for the leader on a connection nobody owns now (it became readable while it was held)."""
        self.backlog.append((conn.fd, 0))
        self.wake_leader()

    def wake_leader(self) -> None:
        try:  # noqa: SIM105 - per requeued connection: contextlib.suppress would add three Python calls
            os.write(self._wake_w, b"\0")
        except OSError:
            pass  # the pipe is full: the leader has wake-ups waiting already

    def wake_main(self) -> None:
        try:  # noqa: SIM105 - per connection to an idle server (on_first): as above
            os.write(self._main_w, b"\0")
        except OSError:
            pass  # the pipe is full: the main thread has wake-ups waiting already

    def close(self) -> None:
        """The last step of a shutdown, once no thread can use the poller or the pipes any more."""
        self.poller.close()
        for fd in (self._wake_r, self._wake_w, self.main_r, self._main_w):
            with contextlib.suppress(OSError):
                os.close(fd)

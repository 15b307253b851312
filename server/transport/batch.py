"""Answers held for one flush, so a client waiting for several wakes once per batch, not once per answer.

A client waiting for its answer sleeps, and waking it costs the sender a few microseconds in the
kernel, as much as a third of a small request. So a connection whose answer is complete is not
written at once when the leader has more work in hand: its owner puts it in its seat's ``held``
queue, still owning it (answers cannot overtake each other), and the batch is written back to
back once the leader has served what its poll returned, after ``HOLD_MAX`` answers or ``HOLD_FOR``
seconds, whichever comes first. Under light load the batch is one answer and nothing waits.

Ownership: putting a connection in a queue hands it to the batch; whoever takes it out (popleft)
owns it, writes what the kernel takes without waiting, parks the connection for writability if
the client is slow, and lets it go (``Reactor.let_go``). The owner appends only to its own seat's
queue; any leader writes every queue (so a thread stuck in a slow call delays nobody's answers),
and the main thread writes a stuck thread's queue (monitor.py). deque append and popleft are
atomic (see leadership.py), so no lock is taken.
"""

from __future__ import annotations

from collections.abc import Callable

from .connection import Connection
from .leadership import WorkerSeat

HOLD_MAX = 64  # finished answers a leader holds before writing them
HOLD_FOR = 0.001  # seconds the first held answer may wait for the rest of its batch


class BatchWriter:
    """The seats' held queues, and writing them; ``write`` is the reactor's (flush, park or close, let go)."""

    __slots__ = ("queues", "write")

    def __init__(self, seats: list[WorkerSeat], write: Callable[[Connection], None]) -> None:
        self.queues = tuple(seat.held for seat in seats)  # scanned in C by any(), once per poll
        self.write = write

    def hold(self, conn: Connection, seat: WorkerSeat) -> None:
        """Keep an owned connection with a finished answer until its batch is written (the owner's call)."""
        held = seat.held
        held.append(conn)
        if len(held) == 1:
            seat.held_since = conn.idle_since
        elif len(held) >= HOLD_MAX or conn.idle_since - seat.held_since >= HOLD_FOR:
            self.flush()

    def flush(self) -> None:
        """Write every held answer, any seat's, and let those connections go."""
        write = self.write
        for held in filter(None, self.queues):  # skips the empty ones in C
            while held:
                try:
                    conn = held.popleft()
                except IndexError:
                    break
                write(conn)

    def flush_seat(self, seat: WorkerSeat) -> None:
        """Write what one seat holds (the main thread, for a thread stuck in a slow call)."""
        held = seat.held
        for _ in range(len(held)):
            try:
                conn = held.popleft()
            except IndexError:
                return
            self.write(conn)

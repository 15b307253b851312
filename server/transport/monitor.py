"""The main thread's part: it watches the leader, runs the sweep, and runs the shutdown.

Why a thread of its own, and why it only watches
------------------------------------------------
The worker threads serve (``reactor.py``); none of them can notice that the leader is stuck inside
a slow application call, since the one that would notice is the one that is stuck. So the main
thread wakes every ``STALL`` seconds while there are clients (four times a second when there are
none) and looks at timestamps the workers set anyway: a leader busy for longer than ``STALL`` has
an idle worker promoted in its place, and answers a stuck thread was holding for its batch are
written without it (parked if their client is slow: the main thread never waits for a client).
Every ``SWEEP_EVERY`` it runs the sweep (``sweeper.py``) and publishes the metrics; at shutdown it
steps the drain every ``_SHUTDOWN_STEP_EVERY``.

The trade-off: a request can stall for up to ``STALL`` before another thread takes over the poller,
and a timeout is enforced up to ``SWEEP_EVERY`` late. What would break: doing any of this on a
worker thread (a stuck leader would stop the watching too), or the sweep waiting for a connection
a worker owns (a slow application call would hold every timeout up).

The monitor works on the reactor's parts (leadership, batch writer, acceptor, sweeper, table),
which it reaches through ``Served``, a protocol the reactor satisfies: reactor.py imports this
module, never the other way round.
"""

from __future__ import annotations

import contextlib
import os
import select
from collections.abc import Callable
from time import monotonic
from typing import Protocol

from ..metrics import ProcessRecorders
from ..protocol import Phase
from .acceptor import Acceptor
from .batch import BatchWriter
from .connection import Connection
from .leadership import Leadership, WorkerSeat
from .sweeper import SWEEP_EVERY, SWEEPER, Sweeper
from .table import ConnectionTable

STALL = 0.002  # seconds inside one request before another thread takes over the poller
_SHUTDOWN_STEP_EVERY = 0.05
_QUIET_BEFORE_CLOSE = 1.0  # at shutdown, idle keep-alive connections are closed once this quiet


class Served(Protocol):
    """What the monitor reads and drives: the reactor's parts, and its stop state (set by ``Reactor.stop``)."""

    leadership: Leadership
    seats: list[WorkerSeat]
    batch: BatchWriter
    acceptor: Acceptor
    sweeper: Sweeper
    table: ConnectionTable
    metrics: ProcessRecorders | None
    on_tick: Callable[[float], None] | None
    stopping: bool
    stop_deadline: float

    def close_connection(self, conn: Connection) -> None: ...

    def let_go(self, conn: Connection) -> None: ...


class Monitor:
    """The main thread's loop over one reactor; ``run`` returns once the reactor has shut down."""

    def __init__(self, reactor: Served) -> None:
        self.reactor = reactor

    def run(self) -> None:
        reactor = self.reactor
        lead = reactor.leadership
        waker = select.poll()
        waker.register(lead.main_r, select.POLLIN)
        next_sweep = monotonic() + SWEEP_EVERY
        stop_seen = False
        while True:
            # Stalls need watching only while there are clients; an idle server wakes 4 times a second.
            if waker.poll((STALL if len(reactor.table) or reactor.stopping else SWEEP_EVERY) * 1000):
                with contextlib.suppress(OSError):
                    os.read(lead.main_r, 4096)
            now = monotonic()
            if reactor.on_tick is not None:
                reactor.on_tick(now)  # a pre-fork worker's heartbeat to its master (worker.py)
            self.watch_leader(now)
            if reactor.stopping and not stop_seen:
                stop_seen = True
                next_sweep = now  # begin shutting down at once
            if now >= next_sweep:
                reactor.acceptor.resume(now)
                idle = reactor.sweeper.sweep(now)
                if reactor.metrics is not None:
                    reactor.metrics.publish(len(reactor.table), idle,
                                            sum(1 for seat in reactor.seats if seat.busy_since))
                if reactor.stopping and self.shutdown_step(now):
                    break
                next_sweep = now + (_SHUTDOWN_STEP_EVERY if reactor.stopping else SWEEP_EVERY)
        self.finish()

    def watch_leader(self, now: float) -> None:
        """Write what a stuck thread holds, and hand the poller on once the leader has stalled."""
        reactor = self.reactor
        for seat in reactor.seats:
            if seat.held and seat.busy_since and now - seat.busy_since >= STALL:
                reactor.batch.flush_seat(seat)
        leader = reactor.leadership.leader
        if leader is not None and leader.busy_since and now - leader.busy_since >= STALL:
            reactor.leadership.promote()

    def shutdown_step(self, now: float) -> bool:
        """Stop accepting, close idle connections, let in-flight ones finish; True when done."""
        reactor = self.reactor
        if reactor.acceptor.listeners:
            # The leader retires the listeners, after accepting what the kernel already completed:
            # closing them from here would reset those connections unanswered.
            reactor.leadership.wake_leader()
            pending = True
            if now >= reactor.stop_deadline:
                reactor.acceptor.retire()  # no leader came free within the grace period
        else:
            pending = False
        for conn in reactor.table.snapshot():
            if not conn.try_claim(SWEEPER):
                pending = True  # in the middle of a request
                continue
            try:
                if conn.closed:
                    continue
                if conn.draining or conn.parked or conn.parser.phase is not Phase.IDLE:
                    pending = True  # a last answer is being written, or a request is still arriving
                elif now - conn.idle_since < _QUIET_BEFORE_CLOSE or conn.has_unread_input():
                    # A client may have sent its next request right after our last answer; closing
                    # now would lose it. Let it arrive: the answer will carry Connection: close.
                    pending = True
                else:
                    reactor.close_connection(conn)
            finally:
                reactor.let_go(conn)
        return not pending or now >= reactor.stop_deadline

    def finish(self) -> None:
        """Release the workers, write what they held, close every connection and the poller."""
        reactor = self.reactor
        reactor.leadership.finish()
        for seat in reactor.seats:
            if seat.thread is not None:
                seat.thread.join(timeout=1.0)
        for seat in reactor.seats:
            reactor.batch.flush_seat(seat)  # answers finished by a thread that has not come back
        for conn in reactor.table.snapshot():
            # A thread still inside the application after the grace period owns its connection;
            # that request is cut off when the process exits, as the grace period means.
            if conn.try_claim(SWEEPER):
                with contextlib.suppress(OSError):
                    conn.flush()
                reactor.close_connection(conn)
                conn.release()
        if reactor.metrics is not None:
            reactor.metrics.publish(0, 0, 0)  # the last counts, before the process exits
        reactor.leadership.close()

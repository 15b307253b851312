"""The main thread's part of the reactor: it watches the leader, enforces timeouts, and runs the shutdown.

Why a thread of its own, and why it only watches
------------------------------------------------
The worker threads serve (``reactor.py``); none of them can notice that the leader is stuck inside
a slow application call, since the one that would notice is the one that is stuck. So the main
thread wakes every ``STALL`` seconds while there are clients (four times a second when there are
none) and looks at timestamps the workers set anyway: a leader busy for longer than ``STALL`` has
an idle worker promoted in its place, and answers a stuck thread was holding for its batch are
written without it. Every ``_SWEEP_EVERY`` it walks the connections nobody is serving (their lock
is free) and closes or answers those past ``--keepalive-timeout``, ``--header-timeout`` or
``--body-timeout``; a connection whose lock is taken is being served and is skipped, so the sweep
never waits for a worker. At shutdown it steps the drain every ``_SHUTDOWN_STEP_EVERY``.

The trade-off: a request can stall for up to ``STALL`` before another thread takes over the poller,
and a timeout is enforced up to ``_SWEEP_EVERY`` late. What would break: doing any of this on a
worker thread (a stuck leader would stop the watching too), or the sweep blocking on a connection's
lock (a slow application call would hold every timeout up).
"""

from __future__ import annotations

import contextlib
import os
import select
from time import monotonic
from typing import TYPE_CHECKING

from ..protocol import Phase, ProtocolError

if TYPE_CHECKING:
    from .reactor import Reactor, WorkerSeat

STALL = 0.002  # seconds inside one request before another thread takes over the poller
_SWEEP_EVERY = 0.25
_SHUTDOWN_STEP_EVERY = 0.05
_QUIET_BEFORE_CLOSE = 1.0  # at shutdown, idle keep-alive connections are closed once this quiet


class Monitor:
    """The main thread's loop over one reactor; ``run`` returns once the reactor has shut down."""

    def __init__(self, reactor: Reactor) -> None:
        self.reactor = reactor

    def run(self) -> None:
        """The main thread's loop: watch the leader, enforce timeouts, run the shutdown; returns when done."""
        reactor = self.reactor
        waker = select.poll()
        waker.register(reactor.main_r, select.POLLIN)
        next_sweep = monotonic() + _SWEEP_EVERY
        stop_seen = False
        while True:
            # Stalls need watching only while there are clients; an idle server wakes 4 times a second.
            if waker.poll((STALL if reactor.conns or reactor.stopping else _SWEEP_EVERY) * 1000):
                with contextlib.suppress(OSError):
                    os.read(reactor.main_r, 4096)
            now = monotonic()
            if reactor.on_tick is not None:
                reactor.on_tick(now)  # a pre-fork worker's heartbeat to its master (worker.py)
            self.watch_leader(now)
            if reactor.stopping and not stop_seen:
                stop_seen = True
                next_sweep = now  # begin shutting down at once
            if now >= next_sweep:
                self.sweep(now)
                if reactor.stopping and self.shutdown_step(now):
                    break
                next_sweep = now + (_SHUTDOWN_STEP_EVERY if reactor.stopping else _SWEEP_EVERY)
        self.finish()

    def watch_leader(self, now: float) -> None:
        """Write what a stuck thread holds, and hand the poller on once the leader has stalled."""
        reactor = self.reactor
        for worker in reactor.workers:
            if worker.held and worker.busy_since and now - worker.busy_since >= STALL:
                self.write_held(worker)
        leader = reactor.leader
        if leader is None or not leader.busy_since or now - leader.busy_since < STALL or not reactor.idle_workers:
            return
        with reactor.leader_lock:
            if reactor.leader is leader and leader.busy_since and reactor.idle_workers:
                reactor.promote()

    def write_held(self, worker: WorkerSeat) -> None:
        """Answers held by a thread now stuck in a slow call: write what goes without waiting, free those."""
        reactor = self.reactor
        held = worker.held
        for _ in range(len(held)):
            try:
                conn = held.popleft()
            except IndexError:
                return
            try:
                done = conn.flush()
            except OSError:
                reactor.close_connection(conn)
                done = True
            if not done:
                held.append(conn)  # a client slow to read: its thread waits for it once free
                continue
            conn.lock.release()
            if conn.dirty and not conn.closed:
                reactor.requeue(conn)

    def sweep(self, now: float) -> None:
        """Resume accepting after a pause, enforce the timeouts of connections nobody is serving, publish."""
        reactor = self.reactor
        if reactor.accept_paused_until and now >= reactor.accept_paused_until and reactor.listeners:
            reactor.accept_paused_until = 0.0
            for fd in reactor.listeners:
                reactor.poller.watch(fd, exclusive=reactor.exclusive)
        settings = reactor.settings
        idle = 0
        for conn in list(reactor.conns.values()):
            if not conn.lock.acquire(blocking=False):
                continue  # a worker is serving it
            try:
                if conn.closed:
                    continue
                if conn.draining:
                    if now >= conn.drain_deadline:
                        reactor.close_connection(conn)
                    continue
                phase = conn.parser.phase
                if phase is Phase.IDLE:
                    limit = settings.keepalive_timeout if conn.served else settings.header_timeout
                    if now - conn.idle_since > limit:
                        reactor.close_connection(conn)
                    else:
                        idle += 1
                elif phase is Phase.HEAD:
                    started = conn.head_started or conn.idle_since
                    if now - started > settings.header_timeout:
                        reactor.reject(conn, ProtocolError(
                            408, f"request head not received within {settings.header_timeout:g} s"), now)
                elif now - conn.last_io > settings.body_timeout:
                    reactor.reject(conn, ProtocolError(
                        408, f"request body stalled for more than {settings.body_timeout:g} s"), now)
            finally:
                conn.lock.release()
        if reactor.metrics is not None:
            reactor.metrics.publish(len(reactor.conns), idle, sum(1 for worker in reactor.workers if worker.busy_since))

    def shutdown_step(self, now: float) -> bool:
        """Stop accepting, close idle connections, let in-flight ones finish; True when done."""
        reactor = self.reactor
        if reactor.listeners:
            # The leader retires the listeners, after accepting what the kernel already completed:
            # closing it from here would reset those connections unanswered.
            reactor.wake_leader()
            pending = True
            if now >= reactor.stop_deadline:
                reactor.retire_listeners()  # no leader came free within the grace period
        else:
            pending = False
        for conn in list(reactor.conns.values()):
            if not conn.lock.acquire(blocking=False):
                pending = True  # in the middle of a request
                continue
            try:
                if conn.closed:
                    continue
                if conn.draining or conn.parser.phase is not Phase.IDLE:
                    pending = True  # a last response is draining, or a request is still arriving
                elif now - conn.idle_since < _QUIET_BEFORE_CLOSE or conn.has_unread_input():
                    # A client may have sent its next request right after our last answer; closing
                    # now would lose it. Let it arrive: the answer will carry Connection: close.
                    pending = True
                else:
                    reactor.close_connection(conn)
            finally:
                conn.lock.release()
        return not pending or now >= reactor.stop_deadline

    def finish(self) -> None:
        """Release the workers, write what they held, close every connection and the poller."""
        reactor = self.reactor
        with reactor.leader_lock:
            reactor.done = True
            idle, reactor.idle_workers = reactor.idle_workers, []
        for worker in idle:
            worker.gate.release()
        reactor.wake_leader()
        for worker in reactor.workers:
            if worker.thread is not None:
                worker.thread.join(timeout=1.0)
        for worker in reactor.workers:
            self.write_held(worker)  # answers finished by a thread that has not come back
        for conn in list(reactor.conns.values()):
            # A thread still inside the application after the grace period keeps its connection
            # locked; that request is cut off when the process exits, as the grace period means.
            if conn.lock.acquire(timeout=0.05):
                try:
                    reactor.close_connection(conn)
                finally:
                    conn.lock.release()
        reactor.poller.close()
        if reactor.metrics is not None:
            reactor.metrics.publish(0, 0, 0)  # the last counts, before the process exits
        reactor.close_pipes()

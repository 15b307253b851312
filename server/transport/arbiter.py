"""The pre-fork master: keeps ``--workers`` processes serving the shared listening sockets, whatever happens.

The master only supervises; it never accepts, never imports the application
and never runs its code, so a crashing worker cannot take the sockets or its
siblings with it, and every new worker imports the application afresh: that
is what makes a reload pick up new code.

One rule drives every change of workers (reload, recycling at
``--max-requests``, more or fewer workers): **start the replacement first, stop
the old one once the new one is ready.** A worker is "ready" when its event loop
runs (it says so in its shared slot, see worker.py); until then the old one
keeps serving. The old one is stopped with SIGTERM, the same graceful path as a
shutdown: it stops accepting (the other workers, which share the same sockets,
get the new connections), finishes what it accepted, answers the requests a
client had already pipelined, and puts ``Connection: close`` on each
connection's last answer. So none of these events costs a request.

The loop is a level-triggered reconciliation, like a controller: signals and
file changes only change the wanted state (``size``, ``generation``), and
``_manage`` compares the workers with it each time round. That keeps the odd
combinations (a reload while a recycle is under way, SIGTTOU during a reload)
correct without a case for each.

A reload whose new code cannot even be imported (a syntax error) must not stop
the old workers: the new ones exit with ``EXIT_BOOT_FAILED`` before they are
ready, the master notes that this generation failed and keeps the old workers
until the next reload.

Signals (docs/signals.md has the table): HUP reload, TTIN/TTOU one worker more
or fewer, USR1 reopen log files (passed on to the workers), TERM/INT graceful
shutdown, QUIT fast shutdown.

Who touches what: an ``Arbiter`` and everything it holds belong to the master
process's main thread. Signal handlers run on that thread too (Python runs
them between two bytecodes of the main thread) and only append to
``_signals``; the loop takes them off at the top of each round. The one
exception is ``restarts``, which the metrics endpoint reads from its own
thread: every key exists from the start and the main thread only ever stores
a new count under an existing key, so a reader sees a count (recent or just
replaced), never a dict that changes size under it.

The operating system is behind one small interface, ``WorkerProcesses``:
start a worker, signal one, reap the exited ones. ``ForkedWorkers`` is the
real one (fork, kill, waitpid); the unit tests (tests/test_arbiter_unit.py)
give the arbiter fake workers instead, and every decision takes ``now`` as an
argument, so the reconciliation runs in-process on a clock the test sets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from .. import errorlog
from ..config import MAX_WORKERS, Settings
from ..logfiles import LogFiles
from .listener import Listener
from .reloader import POLL_EVERY, SourceWatcher
from .worker import BOOTING, EXIT_BOOT_FAILED, RECYCLE, WorkerSlot

_TICK = 0.2  # seconds between checks of heartbeats when nothing else wakes the master
_RESPAWN_WINDOW = 10.0  # seconds
_RESPAWN_BURST = 10  # crashes within the window before the master backs off
_RETRY_BOOT_AFTER = 5.0  # seconds, when a reload's code fails and no old worker is left either
_FAST_GRACE = 2.0  # seconds workers get to exit after SIGQUIT before SIGKILL
RESTART_REASONS = ("crash", "max-requests", "reload", "timeout")
_HANDLED = (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT,
            signal.SIGQUIT)


def _log(message: str, level: int = logging.INFO) -> None:
    errorlog.LOG.log(level, "%s", message)


class WorkerHooks(Protocol):
    """Told about every worker's life (the metrics' slot bookkeeping uses it)."""

    def before_fork(self) -> None: ...

    def spawned(self, pid: int) -> None: ...

    def exited(self, pid: int) -> None: ...


class WorkerProcesses(Protocol):
    """The arbiter's only way to the operating system's processes."""

    def start(self, slot: WorkerSlot) -> int:
        """A new worker process that will serve with ``slot``; its pid. OSError when none can be made."""

    def signal(self, pid: int, signum: int) -> None:
        """Send ``signum`` to worker ``pid``; nothing when it has already gone."""

    def reap(self) -> Iterator[tuple[int, int]]:
        """Every worker that has exited and not been reaped yet, as (pid, exit code: -N for signal N)."""

    def kill(self, pid: int) -> None:
        """SIGKILL worker ``pid`` and wait for it to be gone (the end of a shutdown that ran out of time)."""


class ForkedWorkers:
    """Workers as forked children of this process: fork, kill and waitpid.

    ``boot`` runs in the child (import the application, serve) and its result is
    the child's exit status; ``inherited`` are the master's own descriptors that
    a worker must not keep (the arbiter's wake-up pipe).
    """

    def __init__(self, boot: Callable[[WorkerSlot], int], inherited: Sequence[int] = ()) -> None:
        self.boot = boot
        self.inherited = tuple(inherited)

    def start(self, slot: WorkerSlot) -> int:
        pid = os.fork()
        if pid == 0:
            self._become_worker(slot)
        return pid

    def signal(self, pid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    def reap(self) -> Iterator[tuple[int, int]]:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return  # no children at all
            if pid == 0:
                return  # children, none of them exited
            yield pid, os.waitstatus_to_exitcode(status)

    def kill(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    def _become_worker(self, slot: WorkerSlot) -> None:
        """In the new child: shed the master's signal handling, run the worker, never return."""
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for signum in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGUSR1):
                signal.signal(signum, signal.SIG_IGN)  # the master's business; serve() sets what a worker handles
            signal.signal(signal.SIGQUIT, lambda *_: os._exit(0))
            for fd in self.inherited:
                os.close(fd)
            status = self.boot(slot)
        except BaseException:
            errorlog.exception("worker %d failed", os.getpid())
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(status)


@dataclass(eq=False)
class _Child:
    pid: int
    slot: WorkerSlot
    generation: int
    started: float
    ready: bool = False
    recycle: bool = False  # it served its --max-requests and waits for its replacement
    retiring: float = 0.0  # when it was told to stop (SIGTERM, or SIGKILL for a missed heartbeat)
    reason: str | None = None  # why it is being replaced, counted in Arbiter.restarts when it exits
    killed: bool = False  # sent SIGKILL


class Arbiter:
    """The master's supervisor: the wanted state (``size``, ``generation``) and the workers it reconciles with it.

    ``boot`` runs in each new worker (import the application, serve) and returns
    its exit status; ``processes`` replaces the forked workers (tests).
    """

    def __init__(self, listeners: Sequence[Listener], settings: Settings, boot: Callable[[WorkerSlot], int],
                 log_files: LogFiles | None = None, watcher: SourceWatcher | None = None,
                 hooks: WorkerHooks | None = None, processes: WorkerProcesses | None = None) -> None:
        self.listeners = list(listeners)
        self.hooks = hooks
        self.settings = settings
        self.size = settings.workers
        self.log_files = log_files
        self.watcher = watcher
        self.children: dict[int, _Child] = {}  # in the order they were started
        self.generation = 0  # bumped by each reload; workers of older generations are replaced
        # Workers replaced so far, by reason. The metrics endpoint reads it from another thread, so every
        # key exists from the start: the dict never changes size while being read.
        self.restarts: Counter[str] = Counter(dict.fromkeys(RESTART_REASONS, 0))
        self._failed_generation = -1
        self._retry_boot_at = 0.0
        self._next_watch = 0.0  # when the source watcher is asked next
        self._crashes: list[float] = []
        self._announced = False
        self._startup_failed = False
        self._signals: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.processes = processes or ForkedWorkers(boot, (self._wake_r, self._wake_w))

    @property
    def serving(self) -> int:
        """Workers that are ready and not on their way out."""
        return sum(1 for c in self.children.values() if c.ready and not c.retiring)

    # -- the loop -------------------------------------------------------------------------------------------

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        signal.set_wakeup_fd(self._wake_w)
        for signum in _HANDLED:
            signal.signal(signum, self._queue_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
        self._next_watch = time.monotonic()
        while True:
            status = self.step(time.monotonic(), on_ready)
            if status is not None:
                return status
            self._sleep(_TICK)

    def step(self, now: float, on_ready: Callable[[], None] | None = None) -> int | None:
        """One round of the loop: signals, exited workers, slots, the source watcher, then reconciliation.

        Returns the master's exit status once it has shut down, else None.
        """
        stop = self._handle_signals()
        if stop is not None:
            return self._shutdown(fast=stop == signal.SIGQUIT)
        self._reap(now)
        if self._startup_failed:
            _log("the workers could not load the application; exiting", logging.ERROR)
            self._shutdown(fast=True)
            return 2
        self._check_slots(now)
        if self.watcher is not None and now >= self._next_watch:
            self._next_watch = now + POLL_EVERY
            changed = self.watcher.poll()
            if changed:
                self._reload(f"{changed} changed")
        self._manage(now)
        if not self._announced and self.serving >= self.size:
            self._announced = True
            if on_ready is not None:
                on_ready()
        return None

    def notify(self, signum: int) -> None:
        """Queue a signal for the next round, as the signal handlers do."""
        self._signals.append(signum)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    def _sleep(self, seconds: float) -> None:
        select.select([self._wake_r], [], [], seconds)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def _handle_signals(self) -> int | None:
        """Act on the signals received since last time; the stop signal if one asks to stop."""
        while self._signals:
            signum = self._signals.pop(0)
            if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
                return signum
            if signum == signal.SIGHUP:
                self._reload("SIGHUP")
            elif signum == signal.SIGTTIN:
                if self.size < MAX_WORKERS:
                    self.size += 1
                    _log(f"SIGTTIN: {self.size} workers")
                else:
                    _log(f"SIGTTIN ignored: already {MAX_WORKERS} workers, the most --workers allows")
            elif signum == signal.SIGTTOU:
                self.size = max(1, self.size - 1)
                _log(f"SIGTTOU: {self.size} worker{'s' if self.size > 1 else ''}")
            elif signum == signal.SIGUSR1:
                if self.log_files is not None:
                    self.log_files.reopen()
                self._signal_all(signal.SIGUSR1)
        return None

    def _reload(self, why: str) -> None:
        self.generation += 1
        self._failed_generation = -1
        plural = "s" if self.size > 1 else ""
        _log(f"reloading ({why}): starting {self.size} new worker{plural}, then stopping the old "
             f"{'ones' if plural else 'one'} gracefully")

    # -- workers in, workers out ----------------------------------------------------------------------------

    def _manage(self, now: float) -> None:
        """Bring the workers to the wanted state: ``size`` ready workers running the current generation."""
        live = [c for c in self.children.values() if not c.retiring]
        for child in live:
            if child.generation != self.generation and not child.ready:
                self._retire(child, "reload", now)  # still booting the code a reload replaced
        current = [c for c in live if c.generation == self.generation and not c.recycle and not c.retiring]
        while len(current) > self.size:  # SIGTTOU: one still booting if any, else the oldest
            victim = next((c for c in current if not c.ready), current[0])
            self._retire(victim, None, now)
            current.remove(victim)
        while len(current) < self.size and self._may_spawn(now):
            spawned = self._spawn(now)
            if spawned is None:
                break
            current.append(spawned)
        # Outdated and recycled workers leave only as ready replacements take their place.
        serving = [c for c in self.children.values() if c.ready and not c.retiring]
        for child in [c for c in serving if c not in current]:
            if len(serving) <= self.size:
                break
            self._retire(child, "max-requests" if child.recycle else "reload", now)
            serving.remove(child)

    def _may_spawn(self, now: float) -> bool:
        if self._failed_generation == self.generation:
            # This generation's code does not load. Keep the old workers; only with none left, try again now and then.
            if self.serving or now < self._retry_boot_at:
                return False
            self._retry_boot_at = now + _RETRY_BOOT_AFTER
            return True
        self._crashes = [t for t in self._crashes if now - t < _RESPAWN_WINDOW]
        return len(self._crashes) < _RESPAWN_BURST  # a crash loop waits for the window instead of forking flat out

    def _spawn(self, now: float) -> _Child | None:
        limit = 0
        if self.settings.max_requests:
            limit = self.settings.max_requests + random.randint(0, self.settings.max_requests_jitter)
        slot = WorkerSlot(now, limit)
        if self.hooks is not None:
            self.hooks.before_fork()
        try:
            pid = self.processes.start(slot)
        except OSError as exc:  # out of processes or memory: back off as after a crash, try again later
            _log(f"cannot start a worker: {exc.strerror or exc}", logging.ERROR)
            self._crashes.append(now)
            slot.close()
            if self.hooks is not None:  # give back what before_fork took, as for a worker that ran and died
                self.hooks.spawned(-1)
                self.hooks.exited(-1)
            return None
        child = _Child(pid, slot, self.generation, now)
        self.children[pid] = child
        if self.hooks is not None:
            self.hooks.spawned(pid)
        return child

    def _retire(self, child: _Child, reason: str | None, now: float, signum: int = signal.SIGTERM) -> None:
        if signum == signal.SIGTERM and not child.retiring:
            why = {"reload": "it runs the code before the reload", "max-requests": "its replacement is ready",
                   None: "one worker fewer"}.get(reason, reason)
            _log(f"stopping worker {child.pid} gracefully: {why}")
        child.retiring = child.retiring or now
        child.reason = child.reason or reason
        self.processes.signal(child.pid, signum)

    def _check_slots(self, now: float) -> None:
        """Read each worker's slot: ready yet, done with its requests, heartbeat fresh?"""
        timeout = self.settings.worker_timeout
        grace = self.settings.graceful_timeout + 5.0
        for child in self.children.values():
            beat, state = child.slot.read()
            if state != BOOTING and not child.ready:
                child.ready = True
            if state == RECYCLE and not child.recycle:
                child.recycle = True
                _log(f"worker {child.pid} served its {child.slot.max_requests} requests; replacing it")
            if child.killed:
                continue
            if now - beat > timeout and not child.retiring:  # a retiring one has its graceful deadline
                what = "booted" if state == BOOTING else "sent a heartbeat"
                _log(f"worker {child.pid} has not {what} for {now - beat:.1f} s (--worker-timeout {timeout:g}); "
                     "killing it", logging.WARNING)
                child.killed = True
                self._retire(child, "timeout", now, signal.SIGKILL)
            elif child.retiring and now - child.retiring > grace:
                child.killed = True
                self._retire(child, None, now, signal.SIGKILL)  # outlived its graceful timeout

    def _reap(self, now: float) -> None:
        for pid, code in self.processes.reap():
            child = self._forget(pid)
            if child is None:
                continue
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            reason = child.reason
            if child.retiring:
                pass  # it was told to go; its reason was recorded then
            elif not child.ready and code == EXIT_BOOT_FAILED:
                self._boot_failed(child)
            else:
                reason = "crash"
                _log(f"worker {pid} died ({how}); starting a replacement", logging.WARNING)
                self._crashes.append(now)
            if reason is not None:
                self.restarts[reason] += 1

    def _boot_failed(self, child: _Child) -> None:
        if child.generation != self.generation or self._failed_generation == self.generation:
            return
        self._failed_generation = self.generation
        if not self._announced:
            self._startup_failed = True  # at startup the application must load, or the server is of no use
            return
        old = self.serving
        _log(f"worker {child.pid} could not load the new code (see above); the previous code keeps serving in "
             f"{old} worker{'s' if old != 1 else ''} until a reload succeeds", logging.ERROR)

    def _signal_all(self, signum: int) -> None:
        for pid in self.children:
            self.processes.signal(pid, signum)

    # -- the end --------------------------------------------------------------------------------------------

    def _shutdown(self, fast: bool) -> int:
        """Graceful (TERM/INT): workers finish what they accepted. Fast (QUIT): workers exit at once."""
        # Close our copies of the listening sockets first: while the master holds them, the kernel keeps
        # completing connections into the backlog that no worker will accept, and those clients would
        # wait out the whole shutdown to be reset instead of being refused at once.
        if not fast and self.settings.drain_delay > 0:
            fast = self._drain()
        for listener in self.listeners:
            listener.close()
        self._signal_all(signal.SIGQUIT if fast else signal.SIGTERM)
        deadline = time.monotonic() + (_FAST_GRACE if fast else self.settings.graceful_timeout + 5)
        self._startup_failed = False
        while self.children and time.monotonic() < deadline:
            for pid, _ in self.processes.reap():
                self._forget(pid)
            if not fast and signal.SIGQUIT in self._signals:  # impatient operator: escalate
                self._signals.clear()
                fast = True
                self._signal_all(signal.SIGQUIT)
                deadline = min(deadline, time.monotonic() + _FAST_GRACE)
            self._sleep(0.05)
        for pid in list(self.children):
            self.processes.kill(pid)
        return 0

    def _drain(self) -> bool:
        """--drain-delay: the workers serve on as lame ducks (SIGUSR2, server/transport/lame_duck.py) while the
        master waits; a second TERM/INT ends the wait, QUIT too (True: then the shutdown is fast)."""
        _log(f"draining for {self.settings.drain_delay:g} s before stopping the workers (--drain-delay)")
        self._signal_all(signal.SIGUSR2)
        deadline = time.monotonic() + self.settings.drain_delay
        while self.children and time.monotonic() < deadline:
            for pid, _ in self.processes.reap():
                self._forget(pid)
            if signal.SIGQUIT in self._signals:
                self._signals.clear()
                return True
            if signal.SIGTERM in self._signals or signal.SIGINT in self._signals:
                self._signals.clear()
                break
            self._sleep(0.05)
        return False

    def _forget(self, pid: int) -> _Child | None:
        if self.hooks is not None:
            self.hooks.exited(pid)
        child = self.children.pop(pid, None)
        if child is not None:
            child.slot.close()
        return child

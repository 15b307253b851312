"""The pre-fork master's reconciliation, in-process: an Arbiter over fake workers on a clock the test sets.

tests/test_arbiter.py runs the real master under load; these tests drive the same decisions one
round at a time (``Arbiter.step(now)``) with nothing forked. ``FakeWorkers`` stands in for the
operating system: it hands out pids, records the signals the arbiter sends and lets the test say
when a worker is ready, beats, asks to be recycled or exits. The shared slots are the real ones.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from server.config import Settings
from server.transport.arbiter import Arbiter, ForkedWorkers
from server.transport.worker import EXIT_BOOT_FAILED, READY, RECYCLE, WorkerSlot

T0 = 1000.0  # the test clock's start (monotonic seconds)


@dataclass
class FakeWorkers:
    """The arbiter's WorkerProcesses, without processes.

    A worker sent SIGQUIT or SIGKILL is gone at once (as a real one is); one sent SIGTERM stays until the
    test calls ``exit``, since a real one first finishes what it accepted.
    """

    slots: dict[int, WorkerSlot] = field(default_factory=dict)  # every worker started, by pid
    alive: list[int] = field(default_factory=list)  # started and not yet exited, oldest first
    signals: list[tuple[int, int]] = field(default_factory=list)  # (pid, signal) in the order sent
    exited: list[tuple[int, int]] = field(default_factory=list)  # (pid, exit code) not reaped yet
    killed: list[int] = field(default_factory=list)  # pids of kill() at the end of a shutdown
    start_failures: int = 0  # how many of the next start() calls fail as fork() does without memory
    next_pid: int = 100

    def start(self, slot: WorkerSlot) -> int:
        if self.start_failures:
            self.start_failures -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        pid, self.next_pid = self.next_pid, self.next_pid + 1
        self.slots[pid] = slot
        self.alive.append(pid)
        return pid

    def signal(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        if signum in (signal.SIGQUIT, signal.SIGKILL) and pid in self.alive:
            self.exit(pid, 0 if signum == signal.SIGQUIT else -signal.SIGKILL)

    def reap(self) -> Iterator[tuple[int, int]]:
        while self.exited:
            yield self.exited.pop(0)

    def kill(self, pid: int) -> None:
        self.killed.append(pid)

    # -- what the test makes the workers do -----------------------------------------------------------

    def ready(self, pid: int, now: float) -> None:
        self.slots[pid].beat(now)
        self.slots[pid].set_state(READY, wake_master=False)

    def beat_all(self, now: float) -> None:
        for pid in self.alive:
            self.slots[pid].beat(now)

    def ask_to_recycle(self, pid: int) -> None:
        self.slots[pid].set_state(RECYCLE, wake_master=False)

    def exit(self, pid: int, code: int) -> None:
        self.alive.remove(pid)
        self.exited.append((pid, code))

    def sent(self, signum: int) -> list[int]:
        """The pids that were sent ``signum``, in order."""
        return [pid for pid, sig in self.signals if sig == signum]


def _never_boot(slot: WorkerSlot) -> int:
    raise AssertionError("nothing is forked in these tests")


@pytest.fixture
def make_arbiter() -> Iterator:
    made: list[Arbiter] = []

    def make(**settings: object) -> tuple[Arbiter, FakeWorkers]:
        workers = FakeWorkers()
        arbiter = Arbiter([], Settings(**settings), _never_boot, processes=workers)
        made.append(arbiter)
        return arbiter, workers

    yield make
    for arbiter in made:  # the wake-up pipe is the one thing an arbiter opens
        os.close(arbiter._wake_r)
        os.close(arbiter._wake_w)


def _serving(arbiter: Arbiter, workers: FakeWorkers, now: float) -> list[int]:
    """One round in which every live worker is ready; the pids serving afterwards."""
    arbiter.step(now)
    for pid in workers.alive:
        workers.ready(pid, now)
    arbiter.step(now)
    return sorted(pid for pid, child in arbiter.children.items() if child.ready and not child.retiring)


def test_starts_the_wanted_workers_and_announces_only_when_all_are_ready(make_arbiter):
    arbiter, workers = make_arbiter(workers=3)
    announced = []
    arbiter.step(T0, lambda: announced.append(True))
    assert workers.alive == [100, 101, 102]
    workers.ready(100, T0)
    workers.ready(101, T0)
    arbiter.step(T0 + 0.2, lambda: announced.append(True))
    assert announced == []
    workers.ready(102, T0)
    arbiter.step(T0 + 0.4, lambda: announced.append(True))
    arbiter.step(T0 + 0.6, lambda: announced.append(True))
    assert announced == [True]
    assert workers.alive == [100, 101, 102] and workers.signals == []


def test_a_dead_worker_is_replaced_and_counted_as_a_crash(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    workers.exit(100, -signal.SIGSEGV)
    arbiter.step(T0 + 1)
    assert workers.alive == [101, 102]
    assert sorted(arbiter.children) == [101, 102]
    assert arbiter.restarts["crash"] == 1
    assert sum(arbiter.restarts.values()) == 1


def test_a_crash_loop_waits_for_the_window_instead_of_forking_flat_out(make_arbiter):
    arbiter, workers = make_arbiter(workers=1)
    now = T0
    arbiter.step(now)
    for _ in range(10):  # ten crashes within the ten-second window
        now += 0.1
        workers.exit(workers.alive[0], 1)
        arbiter.step(now)
    assert workers.alive == []  # the tenth was not replaced: the master backs off
    arbiter.step(now + 5)
    assert workers.alive == []
    arbiter.step(T0 + 0.1 + 10.01)  # the first crash has left the window
    assert len(workers.alive) == 1
    assert arbiter.restarts["crash"] == 10


def test_a_failed_fork_backs_off_and_gives_back_the_hooks_slot(make_arbiter):
    arbiter, workers = make_arbiter(workers=1)
    calls: list[tuple[str, int]] = []

    class Hooks:
        def before_fork(self) -> None:
            calls.append(("before_fork", 0))

        def spawned(self, pid: int) -> None:
            calls.append(("spawned", pid))

        def exited(self, pid: int) -> None:
            calls.append(("exited", pid))

    arbiter.hooks = Hooks()
    workers.start_failures = 1
    arbiter.step(T0)
    assert workers.alive == []
    assert calls == [("before_fork", 0), ("spawned", -1), ("exited", -1)]
    arbiter.step(T0 + 0.2)
    assert workers.alive == [100]
    assert calls[-2:] == [("before_fork", 0), ("spawned", 100)]


def test_ttin_adds_a_worker_and_ttou_removes_the_one_still_booting(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    arbiter.notify(signal.SIGTTIN)
    arbiter.step(T0 + 1)
    assert arbiter.size == 3 and workers.alive == [100, 101, 102]
    arbiter.notify(signal.SIGTTOU)
    arbiter.step(T0 + 2)
    assert arbiter.size == 2
    assert workers.sent(signal.SIGTERM) == [102]  # not a serving one
    workers.exit(102, 0)
    arbiter.step(T0 + 3)
    assert workers.alive == [100, 101] and sorted(arbiter.children) == [100, 101]
    assert sum(arbiter.restarts.values()) == 0  # fewer workers is not a restart


def test_ttou_stops_the_oldest_serving_worker_and_never_goes_below_one(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    for _ in range(3):
        arbiter.notify(signal.SIGTTOU)
    arbiter.step(T0 + 1)
    assert arbiter.size == 1
    assert workers.sent(signal.SIGTERM) == [100]
    workers.exit(100, 0)
    arbiter.step(T0 + 2)
    assert workers.alive == [101] and workers.sent(signal.SIGTERM) == [100]


def test_recycling_stops_the_worker_only_once_its_replacement_is_ready(make_arbiter):
    arbiter, workers = make_arbiter(workers=2, max_requests=100)
    assert _serving(arbiter, workers, T0) == [100, 101]
    assert arbiter.children[100].slot.max_requests == 100  # no jitter asked for
    workers.ask_to_recycle(100)
    arbiter.step(T0 + 1)
    assert workers.alive == [100, 101, 102]  # the replacement starts first
    arbiter.step(T0 + 2)
    assert workers.signals == []  # while it boots, the recycled worker keeps serving
    workers.ready(102, T0 + 2)
    arbiter.step(T0 + 3)
    assert workers.signals == [(100, signal.SIGTERM)]
    workers.exit(100, 0)
    arbiter.step(T0 + 4)
    assert workers.alive == [101, 102]
    assert arbiter.restarts["max-requests"] == 1 and arbiter.restarts["crash"] == 0


def test_reload_replaces_every_worker_as_the_new_ones_become_ready(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    arbiter.notify(signal.SIGHUP)
    arbiter.step(T0 + 1)
    assert workers.alive == [100, 101, 102, 103] and workers.signals == []
    workers.ready(102, T0 + 1)
    arbiter.step(T0 + 2)
    assert workers.sent(signal.SIGTERM) == [100]  # one new worker ready: one old one goes
    workers.ready(103, T0 + 2)
    arbiter.step(T0 + 3)
    assert workers.sent(signal.SIGTERM) == [100, 101]
    for pid in (100, 101):
        workers.exit(pid, 0)
    arbiter.step(T0 + 4)
    assert sorted(arbiter.children) == [102, 103]
    assert arbiter.restarts["reload"] == 2


def test_a_reload_whose_code_does_not_load_keeps_the_old_workers(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    announced = []
    arbiter.step(T0, lambda: announced.append(True))
    for pid in (100, 101):
        workers.ready(pid, T0)
    arbiter.step(T0, lambda: announced.append(True))
    assert announced == [True]
    arbiter.notify(signal.SIGHUP)
    arbiter.step(T0 + 1)
    for pid in (102, 103):
        workers.exit(pid, EXIT_BOOT_FAILED)  # a syntax error in the new code
    for second in range(2, 30):
        workers.beat_all(T0 + second)
        assert arbiter.step(T0 + second) is None
    assert workers.alive == [100, 101] and workers.signals == []  # no retries while the old code serves
    assert arbiter.restarts["crash"] == 0
    arbiter.notify(signal.SIGHUP)  # the next reload tries again
    arbiter.step(T0 + 30)
    assert workers.alive == [100, 101, 104, 105]


def test_workers_that_cannot_load_the_app_at_startup_stop_the_master(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    arbiter.step(T0)
    workers.exit(100, EXIT_BOOT_FAILED)
    assert arbiter.step(T0 + 0.2) == 2
    assert workers.sent(signal.SIGQUIT) == [101]  # the other one is stopped at once
    assert workers.alive == [] and arbiter.children == {}


def test_a_worker_that_misses_its_heartbeat_is_killed_and_replaced(make_arbiter):
    arbiter, workers = make_arbiter(workers=2, worker_timeout=10.0)
    assert _serving(arbiter, workers, T0) == [100, 101]
    workers.slots[100].beat(T0 + 5)  # then stuck
    workers.slots[101].beat(T0 + 15)
    arbiter.step(T0 + 15)  # 100's last beat is exactly 10 s old: not yet
    assert workers.signals == []
    workers.slots[101].beat(T0 + 15.1)
    arbiter.step(T0 + 15.1)
    assert workers.signals == [(100, signal.SIGKILL)]
    arbiter.step(T0 + 15.2)
    assert workers.alive == [101, 102]
    assert arbiter.restarts["timeout"] == 1 and arbiter.restarts["crash"] == 0


def test_a_stopping_worker_that_outlives_the_graceful_timeout_is_killed(make_arbiter):
    arbiter, workers = make_arbiter(workers=2, graceful_timeout=3.0)
    assert _serving(arbiter, workers, T0) == [100, 101]
    arbiter.notify(signal.SIGTTOU)
    arbiter.step(T0 + 1)
    assert workers.sent(signal.SIGTERM) == [100]
    workers.beat_all(T0 + 9)
    arbiter.step(T0 + 9)  # 8 s after SIGTERM: within the timeout plus five seconds
    assert workers.sent(signal.SIGKILL) == []
    workers.beat_all(T0 + 9.1)
    arbiter.step(T0 + 9.1)
    assert workers.sent(signal.SIGKILL) == [100]
    arbiter.step(T0 + 9.2)
    assert workers.alive == [101] and sorted(arbiter.children) == [101]


def test_sigusr1_is_passed_on_to_every_worker(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    arbiter.notify(signal.SIGUSR1)
    arbiter.step(T0 + 1)
    assert workers.signals == [(100, signal.SIGUSR1), (101, signal.SIGUSR1)]


def test_sigquit_stops_every_worker_at_once(make_arbiter):
    arbiter, workers = make_arbiter(workers=2)
    assert _serving(arbiter, workers, T0) == [100, 101]
    arbiter.notify(signal.SIGQUIT)
    assert arbiter.step(T0 + 1) == 0
    assert workers.sent(signal.SIGQUIT) == [100, 101]
    assert arbiter.children == {} and workers.killed == []


def test_restarts_can_be_read_from_another_thread_while_workers_come_and_go(make_arbiter):
    """The metrics endpoint's thread reads ``restarts`` while the main thread counts into it (module docstring)."""
    arbiter, workers = make_arbiter(workers=4)
    now = T0
    _serving(arbiter, workers, now)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def scrape() -> None:
        try:
            while not stop.is_set():
                seen.append(sum(arbiter.restarts.values()))  # iterates the dict, as exposition.render does
        except BaseException as exc:
            errors.append(exc)

    reader = threading.Thread(target=scrape)
    reader.start()
    try:
        for n in range(2000):
            now += 2.0  # slower than the crash-loop limit
            workers.exit(workers.alive[n % 4], -signal.SIGKILL)
            workers.beat_all(now)
            arbiter.step(now)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert arbiter.restarts["crash"] == 2000 and len(workers.alive) == 4
    assert seen == sorted(seen) and seen[-1] <= 2000  # every reading was a count that had been reached


def test_forked_workers_start_signal_and_reap_real_processes():
    """The real WorkerProcesses: a forked worker's exit status and death by signal come back from reap.

    reap waits for any child of this process, so only these two pids are looked at.
    """
    slots = [WorkerSlot(T0), WorkerSlot(T0)]
    workers = ForkedWorkers(lambda slot: 7 if slot is slots[0] else signal.pause() or 0)
    pids = [workers.start(slot) for slot in slots]
    try:
        workers.signal(pids[1], signal.SIGTERM)
        reaped: dict[int, int] = {}
        deadline = time.monotonic() + 10
        while not set(pids) <= reaped.keys() and time.monotonic() < deadline:
            reaped.update(workers.reap())  # returns at once when no child has exited: it never blocks
            time.sleep(0.01)
        assert {pid: reaped.get(pid) for pid in pids} == {pids[0]: 7, pids[1]: -signal.SIGTERM}
        workers.signal(pids[0], signal.SIGTERM)  # already reaped: nothing happens
    finally:
        for pid in pids:
            workers.kill(pid)
        for slot in slots:
            slot.close()

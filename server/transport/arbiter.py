"""The pre-fork master: N worker processes on the same listening sockets, replaced when they die.

The master only supervises; it never accepts or runs application code, so a
crashing worker cannot take the listening socket or its siblings with it.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Protocol

from .listener import Listener

_RESPAWN_WINDOW = 10.0  # seconds
_RESPAWN_BURST = 10  # deaths within the window before the master backs off


class WorkerHooks(Protocol):
    """Told about every worker's life (the metrics' slot bookkeeping uses it)."""

    def before_fork(self) -> None: ...

    def spawned(self, pid: int) -> None: ...

    def exited(self, pid: int) -> None: ...


class Arbiter:
    def __init__(self, listeners: list[Listener], workers: int, graceful_timeout: float,
                 run_worker: Callable[[], int], hooks: WorkerHooks | None = None) -> None:
        self.listeners = listeners
        self.hooks = hooks
        self.restarts: Counter[str] = Counter()  # workers replaced, by reason (read by the metrics)
        self.size = workers
        self.graceful_timeout = graceful_timeout
        self.run_worker = run_worker
        self.children: dict[int, float] = {}  # pid -> start time
        self.deaths: list[float] = []
        self.stopping = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop
        for _ in range(self.size):
            self._spawn()
        if on_ready is not None:
            on_ready()
        while not self.stopping:
            self._reap()
            self._fill()
            select.select([self._wake_r], [], [], 1.0)
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        return self._shutdown()

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _spawn(self) -> None:
        if self.hooks is not None:
            self.hooks.before_fork()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                    signal.signal(signum, signal.SIG_DFL)
                os.close(self._wake_r)
                os.close(self._wake_w)
                status = self.run_worker()
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.children[pid] = time.monotonic()
        if self.hooks is not None:
            self.hooks.spawned(pid)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.hooks is not None:
                self.hooks.exited(pid)
            if self.children.pop(pid, None) is not None and not self.stopping:
                code = os.waitstatus_to_exitcode(status)
                how = f"signal {-code}" if code < 0 else f"exit status {code}"
                print(f"server: worker {pid} died ({how}); starting a replacement", file=sys.stderr, flush=True)
                self.deaths.append(time.monotonic())
                self.restarts["crash"] += 1

    def _fill(self) -> None:
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < _RESPAWN_WINDOW]
        if len(self.deaths) >= _RESPAWN_BURST:
            return  # crash loop: wait for the window to pass instead of forking as fast as we can
        while len(self.children) < self.size:
            self._spawn()

    def _shutdown(self) -> int:
        # Close our copies of the listening sockets first: while the master holds one, the kernel keeps
        # completing connections into its backlog that no worker will ever accept, and those clients
        # wait out the whole shutdown to be reset instead of being refused at once.
        for listener in self.listeners:
            listener.close()
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.graceful_timeout + 5
        while self.children and time.monotonic() < deadline:
            self._reap()
            select.select([self._wake_r], [], [], 0.1)
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        return 0

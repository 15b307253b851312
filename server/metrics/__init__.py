"""Prometheus metrics for the whole server, counted lock-free in shared memory and read at scrape time.

Why shared memory. With ``--workers N`` the requests are served by N forked
processes, but a scrape must describe the whole server. The master creates one
anonymous ``MAP_SHARED`` mapping before it forks anything; every worker
inherits it and copies its counts there, and the master (which serves
``/metrics`` from a thread of its own) reads them all at scrape time. Nothing
travels between processes per request and a scrape waits for no worker. The
alternative, the master asking each worker over a pipe, would put a message
exchange into every scrape and an answer path into every worker's event loop,
and a crashed worker could no longer be asked at all.

Why plain lists, per thread. Each serving thread (and the main thread) counts
in a Python list and a few attributes of its own (``store.Recorder``), and is
their only writer, so an increment takes no lock and nothing is lost between
threads whatever the interpreter's switching rules are. Counting straight into
the mapping through a memoryview costs about three times as many instructions
per increment (callgrind), which on ``GET /add/2/3`` was 6 % instead of 5 %.
Each worker's main thread copies its threads' lists into its slot of the
mapping 4 times a second, during the timeout sweep it runs anyway, and once
more when it exits. Each label value has a fixed cell (``layout``): methods
outside the standard nine count as ``OTHER`` and unregistered statuses under
their class, which also bounds what a client can make us store.

Workers that die. A worker's slot outlives it, because the master maps it
too. When the master reaps a worker (crash, SIGKILL, recycling) it adds that
slot's counters to a "retired" total kept in its own memory and frees the slot
for the replacement, so counters never go backwards. A worker that exits
normally publishes everything first; one killed outright loses what it counted
since its last copy, at most a quarter of a second. Gauges (open and idle
connections, busy threads) describe live processes only, so a dead worker's
are dropped.

What is summed and what is sampled. Counters and the histogram are summed
over every thread of every worker, past ones included; gauges are summed over
the live workers. A scrape therefore sees counts up to 0.25 s old, and the
gauges as sampled by the sweep at that moment.

The trade-off. The layout is fixed: a new label value means a new cell, and a
status code the registry does not know is reported by class only. The mapping
has room for ``2 * workers + 2`` slots (old and new workers overlap during a
reload); a worker started when all are taken counts nothing and says so. The
0.25 s delay is the price of the cheaper increment. The master runs the
endpoint in a thread and forks while it runs; the children never touch the
endpoint's or the store's locks, which is what makes that safe.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from .. import errorlog
from ..transport.listener import bind_tcp
from . import exposition, process
from .endpoint import MetricsEndpoint
from .store import ProcessRecorders, Recorder, SharedStore

_BACKLOG = 16  # scrapes come one at a time, from a few Prometheus servers

__all__ = ["Metrics", "ProcessRecorders", "Recorder"]


class Metrics:
    """One server's metrics: made before any fork, then shared by the master and every worker."""

    def __init__(self, workers: int, threads: int, master: bool | None = None, max_connections: int = 0) -> None:
        self.threads = threads
        self.max_connections = max_connections  # per process; 0: not reported
        master = workers > 1 if master is None else master  # --master/--reload/--max-requests: even with one
        self.store = SharedStore(2 * workers + 2 if master else 1, threads)
        self.restarts: Callable[[], Mapping[str, int]] = dict  # the master's counts by reason, when it has one
        self.endpoint: MetricsEndpoint | None = None
        self._slot: int | None = None
        self._cpu = 0.0

    def listen(self, host: str, port: int) -> MetricsEndpoint:
        """Bind the metrics listener (raises OSError); ``start()`` it once the server is set up.

        Bound as the server's own TCP listeners are (``::`` takes IPv4 too); the endpoint's thread
        accepts on it blocking.
        """
        sock = bind_tcp(host, port, _BACKLOG)
        sock.setblocking(True)
        self.endpoint = MetricsEndpoint(sock, self.scrape)
        return self.endpoint

    def scrape(self) -> bytes:
        totals = self.store.totals()
        workers = [pid for pid in self.store.pids() if pid != os.getpid()]
        values = process.read(workers)
        # A dead worker's CPU time moves from /proc to the kernel's total for reaped children, which
        # rounds differently by a clock tick or so: never report less than before.
        self._cpu = values["process_cpu_seconds_total"] = max(self._cpu, values["process_cpu_seconds_total"])
        return exposition.render(totals, threads=self.threads, restarts=self.restarts(), process=values,
                                 max_connections=self.max_connections)

    # -- the pre-fork master's hooks (see transport.arbiter) ----------------------------------------------

    def before_fork(self) -> None:
        self._slot = self.store.claim()
        if self._slot is None:
            errorlog.warning("metrics: no free slot for a new worker; its requests will not be counted")

    def spawned(self, pid: int) -> None:
        self.store.assign(self._slot, pid)

    def exited(self, pid: int) -> None:
        self.store.retire(pid)

    # -- in a serving process -----------------------------------------------------------------------------

    def worker_started(self) -> None:
        """In a forked worker: drop the inherited copy of the master's metrics listener."""
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def single_process(self) -> None:
        """Without a master: this process is the only worker."""
        self.store.use_alone(os.getpid())

    def recorders(self) -> ProcessRecorders | None:
        return self.store.recorders()

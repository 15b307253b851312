"""Lame duck: after SIGTERM/SIGINT, serve on for ``--drain-delay`` seconds while saying goodbye, then shut down.

Why a delay at all
------------------
Whatever sends us traffic learns late that we are leaving. nginx re-resolves a Docker
service name every few seconds, and Docker's DNS keeps a container's address until the
container has stopped; a Kubernetes Service drops the pod's endpoint only after the
kubelet and every node's proxy have heard of the deletion. Closing the listener at the
first signal (what ``--drain-delay 0``, the default, still does) leaves those peers to find
out by failing: a refused connection they must retry elsewhere, or, once the container is
gone and its address leads nowhere, a connect that hangs until their timeout.

What the delay does
-------------------
For ``--drain-delay`` seconds the server keeps accepting and answering as usual, except
that every answer carries ``Connection: close`` (the WSGI runner's ``closing``: a proxy's
idle keep-alive connection is closed by the proxy after its next answer, never under it),
and the environ key ``calc_server.draining`` is True, so an application's health check
can say so (the calculator's ``/healthz`` answers 503 ``draining``: Docker and Kubernetes
health checks, and a rolling-update script, take the replica out). Then the ordinary
graceful shutdown runs (reactor.stop: stop accepting, finish, close). A second SIGTERM or
SIGINT during the delay cuts it short.

Under a master (arbiter.py) the master keeps the time, since its SIGTERM to a worker also
means "you are being recycled" (a reload, --max-requests), which must not make the worker a
lame duck: on its own SIGTERM the master sends each worker SIGUSR2 (``begin``: draining,
without a timer), waits the delay, then stops them with SIGTERM as usual.

State: ``timer`` is touched only by the signal handler, which Python runs on the main
thread; the timer thread does nothing but call ``Reactor.stop``, which is safe from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .. import errorlog
from .reactor import Reactor


class LameDuck:
    """The stop-signal handler of a server with a drain delay (see the module docstring)."""

    def __init__(self, reactor: Reactor, announce: Callable[[], None], delay: float) -> None:
        self.reactor = reactor
        self.announce = announce  # tells the application (environ) that the server is draining
        self.delay = delay
        self.timer: threading.Timer | None = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.timer is not None:  # the second signal: no more waiting
            self.timer.cancel()
            self.reactor.stop()
            return
        self.begin()
        self.timer = threading.Timer(self.delay, self.reactor.stop)
        self.timer.daemon = True
        self.timer.start()

    def begin(self) -> None:
        """Answer with Connection: close and tell the application; the caller decides when to stop."""
        if self.reactor.runner.closing:
            return
        self.reactor.runner.closing = True
        self.announce()
        errorlog.info("draining for %g s (--drain-delay): still serving, every answer with Connection: close, "
                      "/healthz 503; then a graceful shutdown", self.delay)

"""One serving process: the event loop, its worker pool and the application, until a stop signal."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import Any

from ..accesslog import AccessLog
from ..config import Settings
from ..metrics import Metrics
from ..wsgi import WSGIRunner
from ..wsgi.environ import EnvironBuilder
from ..wsgi.proxy import TrustedProxies
from .listener import Listener
from .reactor import Reactor, make_signal_handler
from .tls import TLSContexts, connection_factory


def install_reload(contexts: TLSContexts | None) -> None:
    """SIGHUP in a serving process: re-read the TLS certificate and key for new connections.

    Open connections keep the context they started with, so nothing is dropped.
    Without TLS there is nothing to re-read and SIGHUP is acknowledged on stderr
    (it no longer kills the process, which would surprise someone rotating files).
    """

    def on_hup(signum: int, frame: object) -> None:
        if contexts is None:
            print("server: SIGHUP: no TLS certificate to reload", file=sys.stderr, flush=True)
        else:
            contexts.reload()

    signal.signal(signal.SIGHUP, on_hup)


def serve(listeners: list[Listener], app: Callable[..., Any], settings: Settings, *, multiprocess: bool,
          on_ready: Callable[[], None] | None = None, metrics: Metrics | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; returns the exit status."""
    access_log = AccessLog() if settings.access_log else None
    host, port = _server_name(listeners)
    environ = EnvironBuilder(server_name=host, server_port=port,
                             proxies=TrustedProxies(settings.forwarded_allow_ips), multiprocess=multiprocess)
    runner = WSGIRunner(app, environ, server_header=settings.server_header, access_log=access_log)
    contexts = TLSContexts(settings) if settings.certfile else None
    proxy_trusts = TrustedProxies(settings.forwarded_allow_ips).trusts if settings.proxy_protocol else None
    make = connection_factory(contexts, proxy_trusts)
    for listener in listeners:
        if make is not None and listener.kind == "tcp":  # TLS and the PROXY protocol are for TCP listeners
            listener.extra["connection"] = make
    reactor = Reactor(listeners, runner, settings, access_log, exclusive_accept=multiprocess,
                      metrics=metrics.recorders() if metrics is not None else None)
    handler = make_signal_handler(reactor)
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    install_reload(contexts)
    reactor.start()
    if on_ready is not None:
        on_ready()
    try:
        reactor.run()
    finally:
        if access_log is not None:
            access_log.close()
    return 0


def _server_name(listeners: list[Listener]) -> tuple[str, int]:
    """SERVER_NAME/SERVER_PORT (PEP 3333 requires both): the first TCP listener's; a Unix-only server has
    no host or port of its own, so it says localhost:80 (the Host header, which apps prefer, still wins)."""
    for listener in listeners:
        if listener.kind == "tcp":
            host, port = listener.sock.getsockname()[:2]
            return host, port
    return "localhost", 80

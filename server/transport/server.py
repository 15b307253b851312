"""One serving process: the event loop, its worker pool and the application, until a stop signal."""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..accesslog import AccessLog
from ..config import Settings
from ..wsgi import WSGIRunner
from ..wsgi.environ import EnvironBuilder
from ..wsgi.proxy import TrustedProxies
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


def serve(listener: socket.socket, app: Callable[..., Any], settings: Settings, *, multiprocess: bool,
          on_ready: Callable[[], None] | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; returns the exit status."""
    access_log = AccessLog() if settings.access_log else None
    host, port = listener.getsockname()[:2]
    environ = EnvironBuilder(server_name=host, server_port=port,
                             proxies=TrustedProxies(settings.forwarded_allow_ips), multiprocess=multiprocess)
    runner = WSGIRunner(app, environ, server_header=settings.server_header, access_log=access_log)
    contexts = TLSContexts(settings) if settings.certfile else None
    proxy_trusts = TrustedProxies(settings.forwarded_allow_ips).trusts if settings.proxy_protocol else None
    reactor = Reactor(listener, runner, settings, access_log, exclusive_accept=multiprocess,
                      connection=connection_factory(contexts, proxy_trusts))
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

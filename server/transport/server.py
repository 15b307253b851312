"""One serving process: the event loop, its worker pool and the application, until a stop signal."""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable

from .. import errorlog
from ..accesslog import AccessLog
from ..config import Settings
from ..logfiles import LogFiles
from ..metrics import Metrics
from ..wsgi import WSGIRunner
from ..wsgi.environ import EnvironBuilder
from ..wsgi.pep3333 import WSGIApplication
from ..wsgi.proxy import TrustedProxies
from .lame_duck import LameDuck
from .listener import Listener
from .reactor import Reactor, make_signal_handler
from .tls import TLSContexts, connection_factory
from .worker import READY, WorkerSlot


def install_reload(contexts: TLSContexts | None, *, supervised: bool) -> None:
    """SIGHUP in a serving process.

    Under a master it is ignored here: the master answers SIGHUP by starting new
    workers, which import the application and read the certificate afresh.
    Alone, the process re-reads the TLS certificate and key for new connections
    (open connections keep the context they started with, so nothing is dropped);
    the application's code cannot be reloaded without a master, which the log
    line says. Either way SIGHUP no longer kills the process, which would surprise
    someone rotating files.
    """
    if supervised:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        return

    def on_hup(signum: int, frame: object) -> None:
        # One line saying what SIGHUP did here. Not a warning when it did what it can: without a master the
        # code cannot be reloaded, which the line says as a fact, with how to get that.
        code = "the application's code is reloaded only with a master process (--master)"
        if contexts is None:
            errorlog.info("SIGHUP: no TLS certificate to re-read; %s", code)
            return
        failure = contexts.reload()
        if failure is None:
            errorlog.info("SIGHUP: TLS certificate reloaded from %s for new connections; %s",
                          contexts.settings.certfile, code)
        else:
            errorlog.error("SIGHUP: TLS reload failed, keeping the current certificate: %s", failure)

    signal.signal(signal.SIGHUP, on_hup)


def serve(listeners: list[Listener], app: WSGIApplication, settings: Settings, *, multiprocess: bool,
          on_ready: Callable[[], None] | None = None, metrics: Metrics | None = None,
          log_files: LogFiles | None = None, slot: WorkerSlot | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then shut down gracefully; returns the exit status.

    ``slot`` is given in a worker of a pre-fork master (arbiter.py): the event loop
    beats in it, and says when it is ready and when it served its --max-requests.
    """
    log_files = log_files or LogFiles()
    if slot is not None:
        log_files.reopen()  # in case SIGUSR1 came while this worker was starting
    access_log = AccessLog(log_files.access_fd, line_format=settings.access_log_format,
                           exclude=settings.access_log_exclude) if settings.access_log else None
    host, port = _server_name(listeners)
    proxies = TrustedProxies(settings.forwarded_allow_ips)  # one per process: X-Forwarded-* and PROXY headers
    environ = EnvironBuilder(server_name=host, server_port=port, proxies=proxies, multiprocess=multiprocess)
    runner = WSGIRunner(app, environ, server_header=settings.server_header, access_log=access_log)
    contexts = TLSContexts(settings) if settings.certfile else None
    proxy_trusts = proxies.trusts if settings.proxy_protocol else None
    make = connection_factory(contexts, proxy_trusts)
    for listener in listeners:
        if make is not None and listener.kind == "tcp":  # TLS and the PROXY protocol are for TCP listeners
            listener.options = dataclasses.replace(listener.options, make_connection=make)
    recorders = metrics.recorders() if metrics is not None else None
    if recorders is not None and access_log is not None:
        recorders.access_log_dropped = lambda: access_log.dropped
    reactor = Reactor(listeners, runner, settings, access_log, exclusive_accept=multiprocess, metrics=recorders)
    lame_duck = LameDuck(reactor, environ.announce_draining, settings.drain_delay)
    stop: Callable[[int, object], None] = make_signal_handler(reactor)
    if settings.drain_delay > 0 and slot is None:
        stop = lame_duck
    _handle_signals(stop, access_log, log_files, supervised=slot is not None)
    if slot is not None:  # under a master, which times the drain (lame_duck.py)
        signal.signal(signal.SIGUSR2, lambda signum, frame: lame_duck.begin())
    install_reload(contexts, supervised=slot is not None)
    if slot is not None:
        reactor.on_tick = slot.ticker(lambda: reactor.served, orphaned=reactor.stop)
    reactor.start()
    if slot is not None:
        slot.set_state(READY)
    if on_ready is not None:
        on_ready()
    try:
        reactor.run()
    finally:
        if access_log is not None:
            access_log.close()
    return 0


def _handle_signals(stop: Callable[[int, object], None], access_log: AccessLog | None, log_files: LogFiles, *,
                    supervised: bool) -> None:
    """TERM/INT: graceful shutdown (after --drain-delay: lame_duck.py). QUIT: exit now. USR1: reopen log
    files. TTIN, TTOU: the master's.

    Without a master (one process, no --master) there are no workers to add or
    remove, so TTIN and TTOU are answered with a log line saying how to get them,
    instead of their default action (stopping the process).
    """
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGQUIT, lambda signum, frame: _exit_now(access_log))
    signal.signal(signal.SIGUSR1, lambda signum, frame: log_files.reopen())
    for signum in (signal.SIGTTIN, signal.SIGTTOU):
        signal.signal(signum, signal.SIG_IGN if supervised else _without_master)


def _without_master(signum: int, frame: object) -> None:
    errorlog.warning("%s: this server runs without a master process, so there are no workers to add or remove; "
                     "start it with --master (or --workers 2+, --reload, --max-requests) for that",
                     signal.Signals(signum).name)


def _exit_now(access_log: AccessLog | None) -> None:
    """SIGQUIT: fast shutdown. Connections are cut; only the access-log lines already made are kept."""
    if access_log is not None:
        access_log.flush()
    os._exit(0)


def _server_name(listeners: list[Listener]) -> tuple[str, int]:
    """SERVER_NAME/SERVER_PORT (PEP 3333 requires both): the first TCP listener's; a Unix-only server has
    no host or port of its own, so it says localhost:80 (the Host header, which apps prefer, still wins)."""
    for listener in listeners:
        if listener.kind == "tcp":
            host, port = listener.sock.getsockname()[:2]
            return host, port
    return "localhost", 80

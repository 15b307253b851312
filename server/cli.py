"""``calc-server`` / ``python3 -m server``: settings in, a serving process (or a pre-fork master) out.

Every line this prints goes through the error log (``errorlog``): a time, a
level and one prefix, or JSON with ``--access-log-format json``. That includes
the ready line, ``listening on ...``, which goes to stderr as gunicorn's does,
so that stdout carries access-log lines only.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback
from collections.abc import Sequence

from . import config, errorlog
from .bindspec import parse_bind
from .logfiles import LogFiles
from .metrics import Metrics
from .pidfile import PidFile, PidFileError
from .transport.arbiter import Arbiter
from .transport.listener import Listener, ListenError, open_listeners, raise_open_file_limit
from .transport.reloader import SourceWatcher
from .transport.server import serve
from .transport.tls import build_context
from .transport.worker import EXIT_BOOT_FAILED, WorkerSlot
from .wsgi import load_app


def use_directory(chdir: str) -> None:
    """``--chdir``, then the current directory first on ``sys.path``, as ``python3 -m`` has it (and gunicorn).

    The ``calc-server`` script otherwise starts with its own bin directory there, so
    ``calc-server --app hello:app`` would not find ``hello.py`` beside it. Raises OSError.
    """
    if chdir:
        os.chdir(chdir)
    here = os.getcwd()
    if not sys.path or sys.path[0] not in ("", here):
        sys.path.insert(0, here)


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.load(argv)
    errorlog.configure(json_lines=settings.access_log_format == "json", level=settings.log_level)
    log = errorlog.LOG
    log_files = LogFiles(settings.access_logfile, settings.error_logfile)
    try:
        log_files.open()
    except OSError as exc:
        log.error("%s", exc.strerror)
        return 2
    try:
        use_directory(settings.chdir)
    except OSError as exc:
        log.error("--chdir %s: %s", settings.chdir, exc.strerror or exc)
        return 2
    app = None
    if not settings.supervised:  # with a master, each worker imports the application itself (so reloads work)
        try:
            app = load_app(settings.app)
        except (ImportError, ValueError) as exc:
            log.error("cannot load the application: %s", exc)
            return 2
    context = None
    if settings.certfile:
        try:
            context = build_context(settings)  # fail here, once, rather than in every worker
        except (OSError, ValueError) as exc:
            log.error("cannot set up TLS: %s", exc)
            return 2
    nofile = raise_open_file_limit()
    try:
        listeners = open_listeners(tuple(parse_bind(text) for text in settings.bind), settings.host, settings.port,
                                   settings.backlog, settings.umask)
    except ListenError as exc:
        log.error("%s", exc)
        return 1
    for listener in listeners:
        if listener.kind == "tcp" and context is not None:
            listener.options = dataclasses.replace(listener.options, tls=True)  # each process builds its context
    addresses = ", ".join(listener.display() for listener in listeners)
    ready = (f"listening on {addresses} (pid {os.getpid()}, "
             f"workers {settings.workers}, threads {settings.threads}, open files {nofile})")

    metrics = None
    if settings.metrics_bind:
        metrics = Metrics(settings.workers, settings.threads, master=settings.supervised,
                          max_connections=settings.max_connections)
        try:
            endpoint = metrics.listen(*config.split_host_port(settings.metrics_bind))
        except OSError as exc:
            log.error("cannot listen for metrics on %s: %s", settings.metrics_bind, exc.strerror or exc)
            _close(listeners)
            return 1
        log.info("metrics on %s", endpoint.address)
    pid_file = PidFile(settings.pid) if settings.pid else None
    if pid_file is not None:
        try:
            pid_file.write()
        except PidFileError as exc:
            log.error("%s", exc)
            _close(listeners)
            return 1

    def announce() -> None:
        log.info("%s", ready)

    try:
        if app is not None:
            if metrics is not None:
                metrics.single_process()
                endpoint.start()
            return serve(listeners, app, settings, multiprocess=False, on_ready=announce, metrics=metrics,
                         log_files=log_files)

        def boot(slot: WorkerSlot) -> int:
            """In a new worker: import the application afresh, then serve."""
            if metrics is not None:
                metrics.worker_started()
            try:
                worker_app = load_app(settings.app)
            except Exception as exc:  # a syntax error in reloaded code too: the master keeps the old workers
                detail = str(exc) if isinstance(exc, ValueError) else "".join(
                    traceback.format_exception_only(exc)).strip()
                log.error("worker %d cannot load the application: %s", os.getpid(), detail)
                return EXIT_BOOT_FAILED
            return serve(listeners, worker_app, settings, multiprocess=True, metrics=metrics, log_files=log_files,
                         slot=slot)

        watcher = None
        if settings.reload:
            sys.dont_write_bytecode = True  # a .pyc is trusted by mtime in whole seconds: a quick edit could hide
            watcher = SourceWatcher(settings.app)
        arbiter = Arbiter(listeners, settings, boot, log_files, watcher, hooks=metrics)
        if metrics is not None:
            metrics.restarts = lambda: arbiter.restarts
            endpoint.start()
        return arbiter.run(on_ready=announce)
    finally:
        for listener in listeners:  # a worker never gets here (it leaves with os._exit): the files are ours
            listener.remove_file()
        if pid_file is not None:
            pid_file.remove()


def _close(listeners: list[Listener]) -> None:
    for listener in listeners:
        listener.close()
        listener.remove_file()  # a Unix socket file made above would be left behind, stale

"""``calc-server`` / ``python3 -m server``: settings in, a serving process (or a pre-fork master) out."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from . import config
from .bindspec import parse_bind
from .logfiles import LogFiles
from .metrics import Metrics
from .transport.arbiter import Arbiter
from .transport.listener import ListenError, open_listeners, raise_open_file_limit
from .transport.reloader import SourceWatcher
from .transport.server import serve
from .transport.tls import build_context
from .transport.worker import EXIT_BOOT_FAILED, WorkerSlot
from .wsgi import load_app


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.load(argv)
    log_files = LogFiles(settings.access_logfile, settings.error_logfile)
    try:
        log_files.open()
    except OSError as exc:
        print(f"server: {exc.strerror}", file=sys.stderr)
        return 2
    app = None
    if not settings.supervised:  # with a master, each worker imports the application itself (so reloads work)
        try:
            app = load_app(settings.app)
        except (ImportError, ValueError) as exc:
            print(f"server: cannot load the application: {exc}", file=sys.stderr)
            return 2
    context = None
    if settings.certfile:
        try:
            context = build_context(settings)  # fail here, once, rather than in every worker
        except (OSError, ValueError) as exc:
            print(f"server: cannot set up TLS: {exc}", file=sys.stderr)
            return 2
    nofile = raise_open_file_limit()
    try:
        listeners = open_listeners(tuple(parse_bind(text) for text in settings.bind), settings.host, settings.port,
                                   settings.backlog, settings.umask)
    except ListenError as exc:
        print(f"server: {exc}", file=sys.stderr)
        return 1
    for listener in listeners:
        if listener.kind == "tcp" and context is not None:
            listener.extra["ssl_context"] = context  # TCP listeners speak TLS; each process builds its own context
    addresses = ", ".join(listener.display() for listener in listeners)
    ready = (f"calc-server: listening on {addresses} (pid {os.getpid()}, "
             f"workers {settings.workers}, threads {settings.threads}, open files {nofile})")

    metrics = None
    if settings.metrics_bind:
        metrics = Metrics(settings.workers, settings.threads, master=settings.supervised,
                          max_connections=settings.max_connections)
        try:
            endpoint = metrics.listen(*config.split_host_port(settings.metrics_bind))
        except OSError as exc:
            print(f"server: cannot listen for metrics on {settings.metrics_bind}: {exc.strerror or exc}",
                  file=sys.stderr)
            for listener in listeners:
                listener.close()
                listener.remove_file()  # a Unix socket file made above would be left behind, stale
            return 1
        print(f"calc-server: metrics on {endpoint.address}", flush=True)

    def announce() -> None:
        print(ready, flush=True)

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
                detail = "".join(traceback.format_exception_only(exc)).strip()
                print(f"server: worker {os.getpid()} cannot load the application: {detail}", file=sys.stderr,
                      flush=True)
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

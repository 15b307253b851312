"""``calc-server`` / ``python3 -m server``: settings in, a serving process (or a pre-fork master) out."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import config
from .bindspec import parse_bind
from .metrics import Metrics
from .transport.arbiter import Arbiter
from .transport.listener import ListenError, open_listeners, raise_open_file_limit
from .transport.server import serve
from .transport.tls import build_context
from .wsgi import load_app


def main(argv: Sequence[str] | None = None) -> int:
    settings = config.load(argv)
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
        metrics = Metrics(settings.workers, settings.threads)
        try:
            endpoint = metrics.listen(*config.split_host_port(settings.metrics_bind))
        except OSError as exc:
            print(f"server: cannot listen for metrics on {settings.metrics_bind}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        print(f"calc-server: metrics on {endpoint.address}", flush=True)

    def announce() -> None:
        print(ready, flush=True)

    try:
        if settings.workers == 1:
            if metrics is not None:
                metrics.single_process()
                endpoint.start()
            return serve(listeners, app, settings, multiprocess=False, on_ready=announce, metrics=metrics)

        def run_worker() -> int:
            if metrics is not None:
                metrics.worker_started()
            return serve(listeners, app, settings, multiprocess=True, metrics=metrics)

        arbiter = Arbiter(listeners, settings.workers, settings.graceful_timeout, run_worker, hooks=metrics)
        if metrics is not None:
            metrics.restarts = lambda: arbiter.restarts
            endpoint.start()
        return arbiter.run(on_ready=announce)
    finally:
        for listener in listeners:  # a worker never gets here (it leaves with os._exit): the files are ours
            listener.remove_file()

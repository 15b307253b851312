"""``python3 -m server``: settings in, a serving process (or a pre-fork master) out."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from . import config
from .transport.arbiter import Arbiter
from .transport.listener import bind, display_address, raise_open_file_limit
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
    nofile = raise_open_file_limit()
    try:
        listener = bind(settings.host, settings.port, settings.backlog)
    except OSError as exc:
        print(f"server: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    address = display_address(listener)
    if settings.certfile:
        try:
            build_context(settings)  # fail here, once, rather than in every worker
        except (OSError, ValueError) as exc:
            print(f"server: cannot set up TLS: {exc}", file=sys.stderr)
            return 2
        address = address.replace("http://", "https://", 1)
    ready = (f"calc-server: listening on {address} (pid {os.getpid()}, "
             f"workers {settings.workers}, threads {settings.threads}, open files {nofile})")

    def announce() -> None:
        print(ready, flush=True)

    if settings.workers == 1:
        return serve(listener, app, settings, multiprocess=False, on_ready=announce)
    arbiter = Arbiter(listener, settings.workers, settings.graceful_timeout,
                      lambda: serve(listener, app, settings, multiprocess=True))
    return arbiter.run(on_ready=announce)

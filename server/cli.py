"""``python3 -m server``: settings in, a serving process (or a pre-fork master) out."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence

from . import config
from .logfiles import LogFiles
from .transport.arbiter import Arbiter
from .transport.listener import bind, display_address, raise_open_file_limit
from .transport.reloader import SourceWatcher
from .transport.server import serve
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
    nofile = raise_open_file_limit()
    try:
        listener = bind(settings.host, settings.port, settings.backlog)
    except OSError as exc:
        print(f"server: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    ready = (f"calc-server: listening on {display_address(listener)} (pid {os.getpid()}, "
             f"workers {settings.workers}, threads {settings.threads}, open files {nofile})")

    def announce() -> None:
        print(ready, flush=True)

    if app is not None:
        return serve(listener, app, settings, multiprocess=False, on_ready=announce, log_files=log_files)

    def boot(slot: WorkerSlot) -> int:
        """In a new worker: import the application afresh, then serve."""
        try:
            worker_app = load_app(settings.app)
        except Exception as exc:  # a syntax error in reloaded code too: the master keeps the old workers
            detail = "".join(traceback.format_exception_only(exc)).strip()
            print(f"server: worker {os.getpid()} cannot load the application: {detail}", file=sys.stderr,
                  flush=True)
            return EXIT_BOOT_FAILED
        return serve(listener, worker_app, settings, multiprocess=True, log_files=log_files, slot=slot)

    watcher = None
    if settings.reload:
        sys.dont_write_bytecode = True  # a .pyc is trusted by mtime in whole seconds: a quick edit could hide
        watcher = SourceWatcher(settings.app)
    return Arbiter([listener], settings, boot, log_files, watcher).run(on_ready=announce)

"""The error log: what the server says about itself, one line per event, with a time and a level.

Every message goes through the standard library's ``logging``, under the
logger named ``calc-server`` (``LOG`` below), so that a line has one shape
whichever part of the server wrote it:

    2026-12-06T20:11:13.123Z INFO [4321] calc-server: listening on http://127.0.0.1:8000 (pid 4321, ...)

or, with ``--access-log-format json``, one JSON object per line with the
keys ``time``, ``level``, ``pid``, ``logger`` and ``message`` (and
``exception`` for a traceback), so a log shipper reads both streams alike.
In the text form each line of a multi-line message (a traceback) carries the
same prefix, so ``grep``/``sort`` never meet a bare continuation line.

The handler writes to file descriptor 2 through ``sys.stderr``; ``logfiles``
moves that descriptor to a file with ``dup2`` when ``--error-logfile`` is set,
so the handler follows a SIGUSR1 reopen without knowing about it. ``logging``
takes its own lock per handler and re-creates it after a fork, so any thread
of any process may log. Uncaught exceptions in threads and the main thread
are routed here too (``configure`` installs the hooks).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import TextIO

NAME = "calc-server"
LOG = logging.getLogger(NAME)
LEVELS = ("debug", "info", "warning", "error", "critical")


def _stamp(created: float) -> str:
    """UTC, ISO 8601 with milliseconds: sorts as text and reads the same in every time zone."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def _printable(text: str) -> str:
    """A message may quote a client (a request target, an address): its control characters are escaped, but
    for the newline, which ``TextFormatter`` turns into a new line with the full prefix, so a line can never
    start without the server's own prefix."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02X}" if ord(c) < 256
                   else f"\\u{ord(c):04X}" for c in text)


class TextFormatter(logging.Formatter):
    """``TIME LEVEL [PID] calc-server: message``, the prefix repeated on every line of the message."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{_stamp(record.created)} {record.levelname} [{record.process}] {NAME}: "
        text = _printable(record.getMessage())
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        return "\n".join(prefix + line for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``ensure_ascii`` keeps every control character escaped."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {"time": _stamp(record.created), "level": record.levelname.lower(),
                                    "pid": record.process, "logger": NAME, "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))


class _Stderr(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when the line is written (tests and embedders replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure(*, json_lines: bool = False, level: str = "info") -> None:
    """Set the shape and level of every error-log line; called once by the command line, before anything logs.

    Idempotent: a second call replaces the handler instead of adding one.
    """
    for handler in list(LOG.handlers):
        LOG.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    LOG.addHandler(handler)
    LOG.setLevel(level.upper())
    LOG.propagate = False
    sys.excepthook = _uncaught
    threading.excepthook = _uncaught_in_thread


def _uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    LOG.critical("uncaught exception", exc_info=(kind, exc, tb))


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc = args.exc_value if args.exc_value is not None else args.exc_type()
    LOG.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, exc, args.exc_traceback))


def _default_setup() -> None:
    """Before ``configure`` (tests that build a server in-process, embedders): text lines at INFO."""
    if not LOG.handlers:
        handler = _Stderr()
        handler.setFormatter(TextFormatter())
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)
        LOG.propagate = False


_default_setup()
debug, info, warning, error, exception = LOG.debug, LOG.info, LOG.warning, LOG.error, LOG.exception

__all__ = ["LEVELS", "LOG", "configure", "debug", "error", "exception", "info", "warning"]

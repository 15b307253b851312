"""Where the logs go: stdout/stderr by default, or files that SIGUSR1 reopens after a rotation.

Reopening works on descriptor numbers, not Python file objects: the new file is
opened and ``dup2``'d over the old descriptor in one system call, so the
access log's writer thread and the error log's handler (``errorlog``, which
writes through ``sys.stderr``), from any thread, simply continue into the new
file; nothing needs a lock and no line is written to a closed descriptor. Every process holds its own descriptors, so
the master reopens its own and passes SIGUSR1 on to each worker.
"""

from __future__ import annotations

import contextlib
import os
import sys

from . import errorlog

STDOUT = "-"
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


class LogFiles:
    """The access log's descriptor (stdout unless a path is given) and stderr, redirected to a file if asked."""

    def __init__(self, access_path: str = STDOUT, error_path: str = STDOUT) -> None:
        self.access_path = access_path
        self.error_path = error_path
        self.access_fd = 1

    def open(self) -> None:
        """At startup; raises OSError (with the path) when a file cannot be opened."""
        if self.error_path != STDOUT:
            self._replace(self.error_path, 2)
        if self.access_path != STDOUT:
            self.access_fd = _open(self.access_path)

    def reopen(self) -> None:
        """After logrotate moved the files away: continue in new files at the same paths (safe in a signal handler)."""
        for path, fd in ((self.error_path, 2), (self.access_path, self.access_fd)):
            if path == STDOUT:
                continue
            try:
                self._replace(path, fd)
            except OSError as exc:
                errorlog.error("cannot reopen %s: %s; still writing to the old file", path, exc.strerror or exc)

    @staticmethod
    def _replace(path: str, fd: int) -> None:
        new = _open(path)
        try:
            with contextlib.suppress(AttributeError, ValueError, OSError):
                if fd == 2:
                    sys.stderr.flush()  # what Python buffered for the old file goes there first
            os.dup2(new, fd)
        finally:
            os.close(new)


def _open(path: str) -> int:
    try:
        return os.open(path, _FLAGS, 0o644)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot open log file {path}: {exc.strerror}") from None

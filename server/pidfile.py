"""``--pid FILE``: the serving process's id (the master's, with workers) in a file, for signals and init scripts.

Written once the listeners are bound, so a pid in the file means a server that
accepts connections; removed when that process exits normally, and only if the
file still holds its own id (a newer server may have taken the path over). A
file that names a live process is not overwritten: that is another server
started with the same path, and signalling the wrong one is what the file is
meant to prevent. A stale file (its process gone) is replaced. Written to a
temporary name and renamed, so a reader never sees it half written.
"""

from __future__ import annotations

import contextlib
import os


class PidFileError(Exception):
    """The file cannot be written, or another live process holds it."""


class PidFile:
    """One path; ``write`` after binding, ``remove`` on the way out. Used by the main thread only."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)  # --chdir may change the directory after the settings were read
        self.pid = 0

    def write(self) -> None:
        other = _read_pid(self.path)
        if other and other != os.getpid() and _alive(other):
            raise PidFileError(f"pid file {self.path} names process {other}, which is running; "
                               "is another server using this path?")
        temporary = f"{self.path}.{os.getpid()}.tmp"
        try:
            with open(temporary, "w", encoding="ascii") as out:
                out.write(f"{os.getpid()}\n")
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise PidFileError(f"cannot write pid file {self.path}: {exc.strerror or exc}") from None
        self.pid = os.getpid()

    def remove(self) -> None:
        """Only the process that wrote the file removes it (a forked worker never does)."""
        if self.pid and self.pid == os.getpid() and _read_pid(self.path) == self.pid:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _read_pid(path: str) -> int:
    try:
        with open(path, encoding="ascii", errors="replace") as source:
            text = source.read(32).strip()
    except OSError:
        return 0
    return int(text) if text.isdigit() else 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True

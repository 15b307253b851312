"""The open connections of one serving process: fd -> connection, and the counts the limit and metrics read.

Threads: the leader adds (accept); a connection's owner removes it when closing it; the main
thread's sweep, shutdown and metrics take a snapshot. ``add``, ``remove`` and ``snapshot`` run
under ``lock`` (once per connection, not per request). ``get`` does not take it: it is the one
lookup per readiness event, and a dict lookup concurrent with an insert or delete returns the
old value or the new one, never anything else (one bytecode under the GIL; the free-threaded
build guarantees it for dicts, PEP 703). A stale answer is harmless: an event for a descriptor
closed meanwhile finds nothing to read, and the claim protocol (connection.py) decides ownership.
"""

from __future__ import annotations

import threading

from .connection import Connection


class ConnectionTable:
    """fd -> Connection, with the count of connections served and of those being refused (TLS 503s)."""

    __slots__ = ("by_fd", "lock", "refusing", "serving")

    def __init__(self) -> None:
        self.by_fd: dict[int, Connection] = {}
        self.lock = threading.Lock()
        self.serving = 0  # connections counted against --max-connections
        self.refusing = 0  # over the limit, kept only to say 503 inside TLS (acceptor.py)

    def add(self, conn: Connection) -> None:
        lock = self.lock
        lock.acquire()  # not ``with``: nothing in between can raise, and its __exit__ call costs
        self.by_fd[conn.fd] = conn
        if conn.refusing:
            self.refusing += 1
        else:
            self.serving += 1
        lock.release()

    def remove(self, conn: Connection) -> None:
        """Forget a connection its owner is closing (before the descriptor is closed and can be reused)."""
        lock = self.lock
        lock.acquire()
        if self.by_fd.get(conn.fd) is conn:
            del self.by_fd[conn.fd]
            if conn.refusing:
                self.refusing -= 1
            else:
                self.serving -= 1
        lock.release()

    def snapshot(self) -> list[Connection]:
        with self.lock:
            return list(self.by_fd.values())

    def __len__(self) -> int:
        return len(self.by_fd)

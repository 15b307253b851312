"""Readiness polling for the event loop and the threads that take turns leading it.

On Linux connections are registered edge-triggered, once: the kernel reports
every new arrival of data, so nothing needs re-arming after a request and the
hot path saves a system call (``needs_rearm`` is False, and the reactor skips
the call). The portable fallback emulates one-shot registration, so it says
``needs_rearm``: the reactor re-arms a connection after each read that left it
waiting for more.

A connection whose client does not take its answers is parked for writability
(``want_write``) until it does (``read_only`` again); see connection.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import threading
from collections.abc import Callable


class EpollPoller:
    """Linux: connections edge-triggered, the listener and wake-up pipe level-triggered."""

    needs_rearm = False
    poll: Callable[[float], list[tuple[int, int]]]  # (fd, events) ready within timeout seconds

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._edge = select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP
        self.poll = self._epoll.poll  # the leader calls it for every batch: no Python frame in between

    def watch(self, fd: int, exclusive: bool = False) -> None:
        """Level-triggered, always armed (listening socket, wake-up pipe)."""
        flags = select.EPOLLIN
        if exclusive and hasattr(select, "EPOLLEXCLUSIVE"):
            flags |= select.EPOLLEXCLUSIVE  # one process woken per connection, not the whole herd
        self._epoll.register(fd, flags)

    def add(self, fd: int) -> None:
        self._epoll.register(fd, self._edge)

    def want_write(self, fd: int) -> None:
        """Also report when the kernel will take more output (and at once if it will now)."""
        self._epoll.modify(fd, self._edge | select.EPOLLOUT)

    def read_only(self, fd: int) -> None:
        self._epoll.modify(fd, self._edge)

    def rearm(self, fd: int) -> None:
        """Nothing to do: an edge-triggered registration reports every new arrival by itself."""

    def remove(self, fd: int) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._epoll.unregister(fd)

    def forget(self, fd: int) -> None:
        """Nothing to do for a connection about to be closed: closing its only descriptor takes it out of
        the epoll set (as nginx relies on), one system call fewer per connection."""

    def close(self) -> None:
        self._epoll.close()


class SelectorPoller:
    """Portable fallback: re-arm requests are queued and the loop is woken to apply them."""

    needs_rearm = True  # registrations are one-shot (see poll): the owner re-arms after each read

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._watched: set[int] = set()
        self._writers: set[int] = set()  # parked for writability (guarded by _lock)

    def watch(self, fd: int, exclusive: bool = False) -> None:
        self._watched.add(fd)
        self._selector.register(fd, selectors.EVENT_READ)

    def add(self, fd: int) -> None:
        self._selector.register(fd, selectors.EVENT_READ)

    def want_write(self, fd: int) -> None:
        with self._lock:
            self._writers.add(fd)
        self.rearm(fd)

    def read_only(self, fd: int) -> None:
        with self._lock:
            self._writers.discard(fd)
        self.rearm(fd)

    def rearm(self, fd: int) -> None:
        with self._lock:
            self._pending.append(fd)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def forget(self, fd: int) -> None:
        """The selector keeps its own table of descriptors: a closed one must leave it."""
        with self._lock:
            self._writers.discard(fd)
        self.remove(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        with self._lock:
            pending, self._pending = self._pending, []
            writers = set(self._writers)
        for fd in pending:
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if fd in writers else 0)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(fd)
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.register(fd, mask)
        ready = []
        for key, mask in self._selector.select(timeout):
            fd = key.fd
            if fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            if fd not in self._watched:
                self._selector.unregister(fd)  # one-shot: the owner re-arms it
            ready.append((fd, (select.POLLIN if mask & selectors.EVENT_READ else 0)
                          | (select.POLLOUT if mask & selectors.EVENT_WRITE else 0)))
        return ready

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


AnyPoller = EpollPoller | SelectorPoller  # the type: either works with the reactor
Poller: type[AnyPoller] = EpollPoller if hasattr(select, "epoll") else SelectorPoller

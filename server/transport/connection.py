"""One client connection: its socket, its parser and the clocks its timeouts run on."""

from __future__ import annotations

import contextlib
import select
import socket

from ..protocol import RequestParser


class SendTimeout(OSError):
    """The client stopped reading for longer than the send timeout."""


class Connection:
    """Owned by the event loop while parked, by exactly one worker thread while busy."""

    __slots__ = ("busy", "drain_deadline", "drained", "draining", "fd", "head_started", "idle_since", "last_io",
                 "parser", "peer", "send_timeout", "served", "sock")

    def __init__(self, sock: socket.socket, peer: tuple[str, int], parser: RequestParser, now: float,
                 send_timeout: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer = peer
        self.parser = parser
        self.send_timeout = send_timeout
        self.busy = False
        self.served = 0
        self.idle_since = now  # when the connection last became idle (accept or end of a response)
        self.head_started: float | None = None  # first byte of the request head now being received
        self.last_io = now
        self.draining = False
        self.drain_deadline = 0.0
        self.drained = 0

    def send_all(self, data: bytes) -> None:
        """Write everything, waiting for the client while it makes progress; raise SendTimeout once it stalls.

        The socket stays non-blocking (the event loop needs that), so waiting is
        an explicit poll: one system call in the common case where it all fits.
        """
        sock = self.sock
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        waiter = select.poll()
        waiter.register(self.fd, select.POLLOUT)
        while view:
            if not waiter.poll(self.send_timeout * 1000):
                raise SendTimeout(f"client did not read for {self.send_timeout:g} s")
            try:
                sent = sock.send(view)
            except BlockingIOError:
                continue
            view = view[sent:]

    def send_nowait(self, data: bytes) -> bool:
        """Best effort, for the event loop, which must never block: True when all of it went out."""
        try:
            return self.sock.send(data) == len(data)
        except OSError:
            return False

    def start_draining(self, now: float, seconds: float = 2.0) -> None:
        """Close our side but keep reading for a moment (lingering close).

        Closing a socket that still has unread input makes the kernel send RST,
        which can destroy the error response the client has not read yet.
        """
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.draining = True
        self.drain_deadline = now + seconds

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


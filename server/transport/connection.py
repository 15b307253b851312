"""One client connection: its socket, its parser, answers not yet written and the clocks its timeouts run on."""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import threading

from ..protocol import RequestParser
from ..wsgi.environ import Peer

HOLD_LIMIT = 16384  # bytes of finished answers a connection may hold back to be written with others
CLOSING_BUDGET = 32  # answers a closing server still gives one connection for requests its client had sent
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # this file or socket cannot be sendfile'd
_PREAD_BLOCK = 65536
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # Linux; elsewhere the head simply goes out on its own


class SendTimeout(OSError):
    """The client stopped reading for longer than the send timeout."""


class Connection:
    """Whoever works on a connection holds its lock: the thread serving it, or the timeout sweep."""

    __slots__ = ("answered", "closed", "closing_budget", "dirty", "drain_deadline", "drained", "draining", "fd",
                 "hangup", "head_started", "idle_since", "last_io", "lock", "out", "parser", "peer", "queued",
                 "send_timeout", "served", "set_aside", "sock", "status")
    is_tls = False  # a class attribute, overridden by tls.TLSConnection: plain sockets may use os.sendfile
    sendfile_ok = True  # the kernel may copy a file to this socket itself (send_file); False under TLS

    def __init__(self, sock: socket.socket, peer: tuple[str, str], parser: RequestParser, now: float,
                 send_timeout: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.peer: Peer = peer  # a TLS handshake adds its environ keys (tls.TLSStream)
        self.parser = parser
        self.send_timeout = send_timeout
        self.lock = threading.Lock()
        self.closed = False
        self.dirty = False  # readable since its owner last read: the owner reads again before letting go
        self.hangup = False  # the peer closed its side; its EOF is still to be read
        self.set_aside = False  # in the backlog with complete requests buffered (fairness)
        self.queued = False  # set aside and not yet taken out of the backlog by a leader
        self.served = 0
        self.closing_budget = CLOSING_BUDGET
        self.idle_since = now  # when the connection last became idle (accept or end of a response)
        self.head_started: float | None = None  # first byte of the request head now being received
        self.last_io = now
        self.draining = False
        self.drain_deadline = 0.0
        self.drained = 0
        self.out = b""  # whole answers held back by send_response; every other write sends these first
        self.status = 0  # the last answer's status code and size, set by the WSGI runner (for metrics)
        self.answered = 0

    def send_response(self, data: bytes) -> None:
        """A whole answer: hold it (up to HOLD_LIMIT) so the reactor writes it with the others of its batch.

        Writing a batch of answers back to back wakes a waiting client (or
        proxy) once per batch instead of once per answer; on a busy server
        those wake-ups cost more than the requests themselves. The reactor
        flushes held answers before it polls again or when the batch grows.
        """
        out = self.out + data if self.out else data
        if len(out) > HOLD_LIMIT:
            self.out = b""
            self.send_all(out)
        else:
            self.out = out

    def flush(self) -> bool:
        """Write held answers without waiting; True when nothing is left held."""
        out = self.out
        if not out:
            return True
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            sent = 0
        self.out = out[sent:] if sent < len(out) else b""
        return not self.out

    def send_all(self, data: bytes | memoryview) -> None:
        """Write held answers and then data, waiting for the client while it makes progress.

        Raises SendTimeout once the client stops reading. The socket stays
        non-blocking (the event loop needs that), so waiting is an explicit
        poll: one system call in the common case where it all fits.
        """
        if self.out:
            data = self.out + data
            self.out = b""
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

    def send_parts(self, head: bytes, body: bytes) -> None:
        """A large whole answer, written now: held answers, head and body in one sendmsg, never joined.

        Joining them first would copy the body; the kernel gathers the pieces instead. Whatever the
        socket does not take at once goes out as ``send_all`` sends (waiting for a slow reader).
        """
        if self.is_tls:  # encryption copies anyway; TLSConnection writes in records of its own
            self.send_all(head + body)
            return
        parts = [self.out, head, body] if self.out else [head, body]
        self.out = b""
        try:
            sent = self.sock.sendmsg(parts)
        except BlockingIOError:
            sent = 0
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            self.send_all(memoryview(part)[sent:] if sent else part)
            sent = 0

    def send_file(self, head: bytes, fd: int, offset: int, count: int) -> int:
        """Held answers and ``head``, then ``count`` bytes of the file from ``offset`` with sendfile(2).

        Returns the bytes of the file sent: fewer than ``count`` only when the
        file ends first. Waits for a slow reader as ``send_all`` does (the
        send timeout applies to each stall). Where the kernel refuses sendfile
        for this file, the rest goes through pread and send instead.
        """
        data = self.out + head if self.out else head
        self.out = b""
        try:
            # MSG_MORE: the head waits in the kernel to share its packet with the file's first bytes
            # instead of leaving alone (TCP_NODELAY would send it at once).
            done = self.sock.send(data, _MSG_MORE if count else 0)
        except BlockingIOError:
            done = 0
        if done < len(data):
            self.send_all(data[done:])
        sent = 0
        waiter: select.poll | None = None
        while sent < count:
            try:
                n = os.sendfile(self.fd, fd, offset + sent, count - sent)
            except BlockingIOError:
                if waiter is None:
                    waiter = select.poll()
                    waiter.register(self.fd, select.POLLOUT)
                if not waiter.poll(self.send_timeout * 1000):
                    raise SendTimeout(f"client did not read for {self.send_timeout:g} s") from None
                continue
            except OSError as exc:
                if exc.errno not in _NO_SENDFILE:
                    raise
                return sent + self._pread_send(fd, offset + sent, count - sent)
            if n == 0:
                break  # end of file
            sent += n
        return sent

    def _pread_send(self, fd: int, offset: int, count: int) -> int:
        sent = 0
        while sent < count:
            block = os.pread(fd, min(_PREAD_BLOCK, count - sent), offset + sent)
            if not block:
                break
            self.send_all(block)
            sent += len(block)
        return sent

    def has_unread_input(self) -> bool:
        """Bytes (or EOF) waiting in the kernel that this server has not read yet."""
        try:
            self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)  # data, or b"" at EOF
            return True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def more_requests_sent(self) -> bool:
        """At shutdown: does (part of) another request wait, in our buffer or the kernel's? See Sink.

        The budget bounds it, so a client that keeps its pipeline full cannot hold a stopping server open.
        """
        if self.closing_budget <= 0:
            return False
        if not self.parser.buffered and (self.hangup or not self.has_unread_input()):
            return False  # nothing waiting, or only the client's EOF
        self.closing_budget -= 1
        return True

    def send_nowait(self, data: bytes) -> bool:
        """Best effort, for the event loop, which must never block: True when all of it went out."""
        if self.out:
            data = self.out + data
            self.out = b""
        try:
            return self.sock.send(data) == len(data)
        except OSError:
            return False

    def start_draining(self, now: float, seconds: float = 2.0) -> None:
        """Close our side but keep reading for a moment (lingering close).

        Closing a socket that still has unread input makes the kernel send RST,
        which can destroy the error response the client has not read yet.
        Held answers go first (the caller flushes them when it can wait).
        """
        with contextlib.suppress(OSError):
            self.flush()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        self.draining = True
        self.drain_deadline = now + seconds

    def close(self) -> None:
        self.parser.close()  # a half-received body's file, if any
        try:  # noqa: SIM105 - once per connection: contextlib.suppress would add three Python calls
            self.sock.close()
        except OSError:
            pass


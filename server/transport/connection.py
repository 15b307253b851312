"""One client connection: its stream, its parser, the answers not yet written, and who owns it right now.

Ownership
---------
A connection has exactly one owner at a time: the worker thread serving it, the batch of held
answers it waits in (``batch.py``), or the main thread's sweep. Ownership passes only under the
connection's small ``lock``, taken and let go on the calling thread, never across threads:

- a worker that is reported an arrival claims it in ``Reactor._take``, the hot path, where the
  claim and the matching release are written out inline (reactor.py gives the figure);
- the sweep takes it with ``try_claim``, only if nobody has it;
- every other owner gives it back with ``release``.

Everything else in a connection is touched only by its owner.

The edge-triggered poller reports an arrival once. If it comes while the connection is owned, the
claim fails but leaves a note (``readable_again``, and ``hangup`` for a FIN in the same event)
under the lock; the owner's release finds the note under the same lock and keeps the connection
to read again instead of letting go. So an arrival is never left unread, and the rule needs
nothing from the GIL: the note and the owner are only read and written with the lock held.

Output
------
Whole answers (``send_response``) are kept in ``out`` and written by the batch writer or the
owner, without ever waiting for the client: what the kernel does not take stays in ``out``, the
connection is parked in the poller for writability (``parked``), and the serving loop parses no
further pipelined request from it until ``out`` is written (backpressure). So ``out`` holds at
most ``HOLD_LIMIT`` bytes plus the one answer that crossed it, and a client that does not read
costs a poller registration and a deadline (``--send-timeout``, enforced by the sweep), not a
thread.

Streamed answers (an application's iterable, ``wsgi.file_wrapper`` files) are the exception, by
choice: the application's iterator runs on the worker thread, and freeing that thread while the
client is slow would mean keeping the rest of the body somewhere. nginx spills it to a temporary
file; here that would turn every large download to a slow client into disk writes of up to the
whole body, with a disk budget to manage. Instead up to ``STREAM_LIMIT`` bytes are kept without
waiting, and beyond that the thread waits for the client (``drain_output``, bounded by
``--send-timeout`` per stall) while the monitor hands the poller on after ``STALL``, so everyone
else is served by the other threads. Memory per connection stays bounded either way.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
from collections.abc import Callable

from ..protocol import RequestParser
from ..wsgi.peer import PeerInfo
from .stream import Stream

HOLD_LIMIT = 16384  # bytes of whole answers kept before the connection stops serving until they are written
STREAM_LIMIT = 65536  # bytes of a streamed answer kept without waiting for the client
CLOSING_BUDGET = 32  # answers a closing server still gives one connection for requests its client had sent
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # this file or socket cannot be sendfile'd
_PREAD_BLOCK = 65536
_MSG_MORE = getattr(socket, "MSG_MORE", 0)  # Linux; elsewhere the head simply goes out on its own
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class SendTimeout(OSError):
    """The client stopped reading for longer than the send timeout."""


class Connection:
    """One accepted client; see the module docstring for who may touch what.

    Owned by the thread that claimed it: ``stream``, ``parser``, ``out`` and the clocks. Under
    ``lock`` (any thread, briefly): ``owner``, ``readable_again``, and ``hangup`` being set. Read-only after accept:
    ``fd``, ``send_timeout``. ``peer`` is replaced whole, never changed.
    """

    __slots__ = (
        "answered",
        "closed",
        "closing_budget",
        "drain_deadline",
        "drain_when_written",
        "drained",
        "draining",
        "fd",
        "hangup",
        "head_started",
        "idle_since",
        "last_io",
        "lock",
        "out",
        "owner",
        "parked",
        "parked_since",
        "parser",
        "peer",
        "readable_again",
        "refusing",
        "requests_waiting",
        "send_timeout",
        "served",
        "status",
        "stream",
    )
    sendfile_ok = True  # the kernel may copy a file to this socket itself (send_file); False under TLS
    handshake_done = True  # no handshake to wait for; TLSConnection answers from its stream

    def __init__(self, stream: Stream, peer: PeerInfo, parser: RequestParser, now: float,
                 send_timeout: float) -> None:
        self.stream = stream
        self.fd = stream.fileno()
        self.peer = peer
        self.parser = parser
        self.send_timeout = send_timeout
        self.lock = threading.Lock()  # guards owner and readable_again, nothing else
        self.owner: object | None = None
        self.readable_again = False  # an arrival was reported while someone owned it
        self.closed = False
        self.hangup = False  # the peer closed its side; its EOF is still to be read
        self.requests_waiting = False  # complete requests wait in its buffer: serve them before reading more
        self.refusing = False  # over the connection limit: answered 503 once its TLS handshake is done
        self.served = 0
        self.closing_budget = CLOSING_BUDGET
        self.idle_since = now  # when the connection last became idle (accept or end of a response)
        self.head_started: float | None = None  # first byte of the request head now being received
        self.last_io = now
        self.draining = False
        self.drain_deadline = 0.0
        self.drained = 0
        self.drain_when_written = False  # a last answer is still being written: then close our side
        self.parked = False  # waiting in the poller for the client to take ``out``
        self.parked_since = 0.0  # when it was parked, or last made progress while parked
        self.out: bytes | memoryview = b""  # whole answers not yet written; every write sends these first
        self.status = 0  # the last answer's status code and size, set by the WSGI runner (for metrics)
        self.answered = 0

    # -- ownership (the claim for an arrival is Reactor._take's; see the module docstring) ------------

    def try_claim(self, owner: object) -> bool:
        """Take it only if nobody has it, leaving no note (the sweep: it has nothing to read)."""
        with self.lock:
            if self.owner is None:
                self.owner = owner
                return True
            return False

    def release(self) -> bool:
        """Give the connection up; False when it became readable meanwhile: the caller still owns it."""
        lock = self.lock
        lock.acquire()  # nothing between acquire and release can raise
        if self.readable_again:
            self.readable_again = False
            lock.release()
            return False
        self.owner = None
        lock.release()
        return True

    # -- writing -----------------------------------------------------------------------------------

    def send_response(self, data: bytes) -> None:
        """A whole answer: kept (never waited for) and written with the others of its batch.

        Writing a batch of answers back to back wakes a waiting client (or proxy) once per batch
        instead of once per answer; on a busy server those wake-ups cost more than the requests.
        Past ``HOLD_LIMIT`` what the kernel takes now is written; the serving loop parks the rest.
        """
        out = self.out
        if out:
            self.out = out = b"".join((out, data))
        else:
            self.out = out = data
        if len(out) > HOLD_LIMIT:
            self.flush()

    def flush(self) -> bool:
        """Write what is kept without waiting; True when nothing is left."""
        out = self.out
        if not out:
            return True
        try:
            sent = self.stream.send(out)
        except BlockingIOError:
            sent = 0
        if sent < len(out):
            self.out = memoryview(out)[sent:] if sent else out
            return False
        self.out = b""
        return True

    def pending_output(self) -> int:
        """Bytes kept that the kernel has not taken yet."""
        return len(self.out)

    def wait_writable(self) -> None:
        """Wait until the kernel will take more, up to the send timeout: the one place a thread waits for a client."""
        waiter = select.poll()
        waiter.register(self.fd, select.POLLOUT)
        if not waiter.poll(self.send_timeout * 1000):
            raise SendTimeout(f"client did not read for {self.send_timeout:g} s")

    def drain_output(self) -> None:
        """Write everything kept, waiting for the client while it makes progress (streamed answers only)."""
        while not self.flush():
            self.wait_writable()

    def send_all(self, data: bytes | memoryview) -> None:
        """Part of a streamed answer: kept up to STREAM_LIMIT without waiting, beyond it written out.

        Raises SendTimeout once the client stops reading for the send timeout.
        """
        if data:
            self.out = b"".join((self.out, data)) if self.out else data
        if not self.flush() and self.pending_output() > STREAM_LIMIT:
            self.drain_output()

    def send_parts(self, head: bytes, body: bytes) -> None:
        """A large whole answer: kept answers, head and body in one sendmsg, never joined.

        Joining them first would copy the body; the kernel gathers the pieces instead. What the
        socket does not take is kept (one copy of the rest) and the connection is parked, as for any
        whole answer.
        """
        parts = [self.out, head, body] if self.out else [head, body]
        self.out = b""
        try:
            sent = self.stream.sendmsg(parts) if isinstance(self.stream, socket.socket) else 0
        except BlockingIOError:
            sent = 0
        rest = []
        for part in parts:
            if sent >= len(part):
                sent -= len(part)
                continue
            rest.append(memoryview(part)[sent:] if sent else part)
            sent = 0
        if rest:
            self.out = rest[0] if len(rest) == 1 else b"".join(rest)
            self.flush()

    def send_file(self, head: bytes, fd: int, offset: int, count: int) -> int:
        """Kept answers and ``head``, then ``count`` bytes of the file from ``offset`` with sendfile(2).

        A streamed answer: waits for a slow reader as ``send_all`` does. Returns the bytes of the file
        sent, fewer than ``count`` only when the file ends first. Where the kernel refuses sendfile
        for this file, the rest goes through pread and send instead.
        """
        data = b"".join((self.out, head)) if self.out else head
        self.out = b""
        try:
            # MSG_MORE: the head waits in the kernel to share its packet with the file's first bytes
            # instead of leaving alone (TCP_NODELAY would send it at once).
            done = self.stream.send(data, _MSG_MORE if count else 0)
        except BlockingIOError:
            done = 0
        if done < len(data):
            self.out = data[done:]
            self.drain_output()
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(self.fd, fd, offset + sent, count - sent)
            except BlockingIOError:
                self.wait_writable()
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
        self.drain_output()
        return sent

    def send_nowait(self, data: bytes) -> bool:
        """Kept answers then ``data``, best effort, for whoever must never wait: True when all went out."""
        self.out = b"".join((self.out, data)) if self.out else data
        try:
            return self.flush()
        except OSError:
            return False

    # -- reading -----------------------------------------------------------------------------------

    def has_unread_input(self) -> bool:
        """Bytes (or EOF) waiting that this server has not read yet, in the kernel or in the stream."""
        try:
            self.stream.recv(1, _PEEK)  # data, or b"" at EOF
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

    # -- closing -----------------------------------------------------------------------------------

    def start_draining(self, now: float, seconds: float = 2.0) -> bool:
        """Once what is kept is written, close our side but keep reading for a moment (lingering close).

        Closing a socket that still has unread input makes the kernel send RST, which can destroy the
        answer the client has not read yet. True when our side is closed now; False when answers are
        still kept: the caller parks the connection, and whoever writes the rest closes our side.
        """
        try:
            written = self.flush()
        except OSError:
            written = True  # the client is gone: nothing left to wait for
        if not written:
            self.drain_when_written = True
            return False
        self.drain_when_written = False
        try:  # noqa: SIM105 - once per connection: contextlib.suppress would add three Python calls
            self.stream.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.draining = True
        self.drain_deadline = now + seconds
        return True

    def close(self) -> None:
        self.parser.close()  # a half-received body's file, if any
        try:  # noqa: SIM105 - once per connection: contextlib.suppress would add three Python calls
            self.stream.close()
        except OSError:
            pass


# What an accepted socket is made into: (socket, peer, parser, now, send timeout) -> connection.
ConnectionFactory = Callable[[socket.socket, PeerInfo, RequestParser, float, float], Connection]

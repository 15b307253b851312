"""The serving core: leader/followers over one epoll instance, with hand-off only when a call stalls.

One worker thread at a time is the leader: it waits in the poller and handles
whatever becomes ready itself, inline: accept, read and parse, run the
application, write the response, re-arm the connection. For fast applications
that means no thread hand-off at all, which in CPython costs more than parsing
a request does.

Slow calls must not hold everyone else up, so the main thread watches the
leader (``monitor.py``, which also enforces the timeouts and runs the
shutdown). Once the leader has spent ``STALL`` seconds inside one request (a slow
query, a client that will not read its response), the main thread promotes an
idle worker, which takes over the poller; the old leader finishes its request,
hands over any events it had not reached yet, and becomes a follower. At most
``--threads`` requests run at once; idle and half-received connections are
parked in the poller and cost no thread.

Each connection is armed one-shot, so exactly one thread owns it at a time; the
owner holds ``conn.lock``, which is also what keeps the timeout sweep away.

Finished answers are written in batches. A client waiting for its answer
sleeps, and waking it costs the sender a few microseconds in the kernel, as
much as a third of a small request. So a whole answer of up to 16 KiB is held
in its connection, which stays locked (answers cannot overtake each other),
and the leader writes the batch back to back once it has served what its poll
returned, after ``HOLD_MAX`` answers or ``HOLD_FOR`` seconds, whichever comes
first; the client then wakes once per batch. A thread stuck in a slow call
holds no one up: the monitor writes what it held once the call counts as a
stall. Under light load the batch is one answer and nothing waits. A client's EOF
ends its requests, not its wish for the answers (RFC 9112 9.6): what a
connection holds is written before it closes, so a client that half-closes loses
no held answer; only the EOF path looks, no answer pays for it.

With --metrics-bind, each thread counts into a recorder of its own
(server/metrics) at points that exist anyway: accept, read, a request done, a
protocol error; no lock, a few increments. The main thread copies the counts to
shared memory during its sweep, so nothing about metrics waits on the hot path.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import os
import select
import socket
import tempfile
import threading
from collections.abc import Callable
from time import monotonic
from typing import cast

from .. import errorlog
from ..accesslog import AccessLog
from ..config import Settings
from ..metrics import ProcessRecorders, Recorder
from ..protocol import FirstBlocks, Phase, ProtocolError, RequestParser
from ..protocol.writer import CONTINUE, error_response
from ..wsgi import WSGIRunner
from .connection import Connection
from .listener import UNIX_PEER, Listener, refuse
from .monitor import Monitor
from .poller import Poller

HOLD_MAX = 64  # finished answers a leader holds before writing them
HOLD_FOR = 0.001  # seconds the first held answer may wait for the rest of its batch
_RECV_SIZE = 65536
_POLL_TIMEOUT = 0.25
_DRAIN_LIMIT = 1 << 20  # bytes a closing connection may still send us before we cut it off
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class WorkerSeat:
    """A thread's seat: the gate it waits at while a follower, when its current call began, what it holds."""

    __slots__ = ("busy_since", "gate", "held", "held_since", "stats", "thread")

    def __init__(self, stats: Recorder | None) -> None:
        self.stats = stats  # this thread's metrics row, None when metrics are off
        self.gate = threading.Lock()
        self.gate.acquire()
        self.busy_since = 0.0  # non-zero while inside a request; read by the monitor
        self.thread: threading.Thread | None = None
        # Connections with answers waiting to be written, still locked by this thread. Any leader
        # may pop and write them (append and popleft are atomic), so a stalled thread delays none.
        self.held: collections.deque[Connection] = collections.deque()
        self.held_since = 0.0


class Reactor:
    def __init__(self, listeners: list[Listener], runner: WSGIRunner, settings: Settings,
                 access_log: AccessLog | None, exclusive_accept: bool = False,
                 metrics: ProcessRecorders | None = None) -> None:
        # Mind the count: a reactor has 29 attributes. CPython 3.11 keeps an instance's attribute names in
        # a layout shared by its class, which its specialised attribute loads read fastest, only up to
        # about 30 names. A 30th attribute made each keep-alive GET cost about 700 instructions more
        # (callgrind), through the many ``self.x`` reads on the request path; new state goes into an
        # object the reactor already holds.
        # fd -> listener; emptied when the listeners are retired at shutdown
        self.listeners: dict[int, Listener] = {listener.fd: listener for listener in listeners}
        self.runner = runner
        self.settings = settings
        self.access_log = access_log
        # One parser per connection; the parsers share what new connections usually begin with.
        # A body beyond --max-body-in-memory waits in an anonymous file (protocol/body.py).
        self.new_parser = functools.partial(RequestParser, settings.limits(), FirstBlocks(),
                                            spill=tempfile.TemporaryFile)
        self._max_pipeline = settings.max_pipeline
        self.poller = Poller()
        self._rearm_needed = self.poller.needs_rearm
        self.conns: dict[int, Connection] = {}
        # Work a leader must do besides polling: events a demoted leader had not reached,
        # and connections set aside after max_pipeline requests so one client cannot hog a thread.
        self.backlog: collections.deque[tuple[int, int] | Connection] = collections.deque()
        self.stopping = False
        self.served = 0  # requests answered by this process (approximate: threads add without a lock)
        self.on_tick: Callable[[float], None] | None = None  # the main loop calls it each time round
        self.done = False
        self.stop_deadline = 0.0
        self.leader_lock = threading.Lock()  # guards leadership changes
        # Metrics: a recorder per worker thread, the last for the main thread (timeouts), which publishes.
        self.metrics = metrics
        self.workers = [WorkerSeat(metrics.threads[i] if metrics else None) for i in range(settings.threads)]
        self._helds = tuple(worker.held for worker in self.workers)  # scanned in C by any(), once per poll
        self.main_stats = metrics.threads[-1] if metrics else None
        self.idle_workers: list[WorkerSeat] = []
        self.leader: WorkerSeat | None = None
        self.accept_paused_until = 0.0
        self._wake_r, self._wake_w = os.pipe()  # wakes the leader out of the poller
        self.main_r, self._main_w = os.pipe()  # wakes the main thread (signals)
        for fd in (self._wake_r, self._wake_w, self.main_r, self._main_w):
            os.set_blocking(fd, False)
        self.exclusive = exclusive_accept  # pre-fork: wake one process per connection, not all
        for fd in self.listeners:
            self.poller.watch(fd, exclusive=exclusive_accept)
        self.poller.watch(self._wake_r)
        self._overload = error_response(503, "server is at its connection limit; retry shortly",
                                        date=runner.dates.now(), extra="Retry-After: 1")

    # -- control (any thread, or a signal handler) -------------------------------------------------------

    def stop(self) -> None:
        """Begin graceful shutdown; safe from a signal handler."""
        self.runner.closing = True
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = monotonic() + self.settings.graceful_timeout
        self.wake_main()

    def wake_main(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._main_w, b"\0")

    # -- threads: the workers serve, the main thread watches (monitor.py) ------------------------------------

    def start(self) -> None:
        """Start the worker threads; the first one leads. Before the ready line, so it is printed by a whole server."""
        for index, worker in enumerate(self.workers):
            worker.thread = threading.Thread(target=self._work, args=(worker,), name=f"worker-{index}",
                                             daemon=True)
        self.leader = self.workers[0]
        self.idle_workers = self.workers[1:]
        self.workers[0].gate.release()
        for worker in self.workers:
            assert worker.thread is not None
            worker.thread.start()

    def run(self) -> None:
        """The main thread's part (server/transport/monitor.py); returns once shutdown is complete."""
        if self.workers[0].thread is None:
            self.start()
        Monitor(self).run()

    def promote(self) -> None:
        """Hand the poller to an idle worker; caller holds self.leader_lock and has checked one is idle."""
        worker = self.idle_workers.pop()
        self.leader = worker
        worker.gate.release()

    def close_pipes(self) -> None:
        """The last step of a shutdown, once no thread can use the wake-up pipes any more."""
        for fd in (self._wake_r, self._wake_w, self.main_r, self._main_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- worker threads ---------------------------------------------------------------------------------------

    def _work(self, me: WorkerSeat) -> None:
        while True:
            me.gate.acquire()  # a follower waits here until promoted
            if self.done:
                return
            self._lead(me)
            with self.leader_lock:
                if self.done:
                    return
                self.idle_workers.append(me)

    def _lead(self, me: WorkerSeat) -> None:
        """Poll and serve inline until demoted.

        Polled events go into the shared backlog before any is handled, so when
        this thread gets stuck in a slow call the next leader finds the rest there
        instead of them waiting behind the slow one.
        """
        poll = self.poller.poll
        backlog = self.backlog
        conns = self.conns
        take = self._take
        helds = self._helds
        while self.leader is me and not self.done:
            if self.stopping and self.listeners:
                self.retire_listeners(accepting=me)
            if not backlog:
                if any(helds):
                    self._flush(me)  # and look again: a connection written may be back in the backlog
                else:
                    try:
                        backlog.extend(poll(_POLL_TIMEOUT))
                    except OSError:
                        break  # poller closed at shutdown
                continue
            try:
                item = backlog.popleft()
            except IndexError:
                continue
            if type(item) is tuple:
                fd, events = item
                conn = conns.get(fd)
                if conn is None:
                    self._dispatch_other(fd, me)
                    continue
                if events & _HANGUP:
                    conn.hangup = True  # data and FIN can come as one event: read until the EOF shows
            else:
                # a client that pipelined more than max_pipeline: whatever else is ready goes first
                conn = cast(Connection, item)  # not a tuple, so the backlog's other kind
                conn.queued = False
                with contextlib.suppress(OSError):
                    backlog.extend(poll(0))
            conn.dirty = True
            take(conn, me)  # if its owner is busy, the owner sees the flag and carries on
        self._flush(me)  # demoted or stopping: what this thread holds must not wait for it to lead again

    def _dispatch_other(self, fd: int, me: WorkerSeat) -> None:
        if fd in self.listeners:
            self._accept(fd, me.stats)
        elif fd == self._wake_r:
            with contextlib.suppress(OSError):
                os.read(self._wake_r, 4096)

    def _take(self, conn: Connection, me: WorkerSeat) -> None:
        """Read and serve a readable connection unless another thread owns it.

        The flag is set before trying the lock and checked again after letting go
        of it, so data that arrives while the owner is busy is never left unread:
        either this thread gets the lock, or the owner sees the flag.
        """
        while conn.dirty and not conn.closed and conn.lock.acquire(False):
            set_aside = False
            try:
                while conn.dirty and not conn.closed:
                    conn.dirty = False
                    if self._on_readable(conn, me):
                        set_aside = True  # for fairness; the backlog comes back to it
                        break
                if conn.out and not conn.closed:
                    if set_aside:
                        conn.send_all(b"")
                    elif self.backlog or any(self._helds):
                        self._hold(conn, me)
                        return  # still locked: whoever writes its answers lets it go
                    elif not conn.flush():  # a batch of one, what _flush would write next: no detour
                        self._wait_out(conn, me)
                if set_aside:
                    # The backlog will not run dry while this client pipelines: write the batch now,
                    # so the answers held for others do not wait for it.
                    self._flush(me)
            except OSError:
                self.close_connection(conn)
            except BaseException:
                conn.lock.release()
                raise
            conn.lock.release()
            if set_aside and conn.queued:
                return  # else a leader took it out of the backlog while we held it: it counts on us

    def _hold(self, conn: Connection, me: WorkerSeat) -> None:
        """Keep a connection with a finished answer locked until its batch is written."""
        held = me.held
        held.append(conn)
        if len(held) == 1:
            me.held_since = conn.idle_since
        elif len(held) >= HOLD_MAX or conn.idle_since - me.held_since >= HOLD_FOR:
            self._flush(me)

    def _flush(self, me: WorkerSeat) -> None:
        """Write every held answer, this thread's and any other's, and let those connections go."""
        release = self._release
        for held in filter(None, self._helds):  # skips the empty ones in C
            while held:
                try:
                    conn = held.popleft()
                except IndexError:
                    break
                release(conn, me)

    def _release(self, conn: Connection, me: WorkerSeat) -> None:
        try:
            if not conn.flush():
                self._wait_out(conn, me)
        except OSError:
            self.close_connection(conn)
        conn.lock.release()
        if conn.dirty and not conn.closed:
            self.requeue(conn)

    @staticmethod
    def _wait_out(conn: Connection, me: WorkerSeat) -> None:
        """The rest of what the connection holds, for a client not reading fast enough: wait for it like
        any other write, with the monitor watching so the poller does not wait too."""
        me.busy_since = monotonic()
        try:
            conn.send_all(b"")
        finally:
            me.busy_since = 0.0

    def requeue(self, conn: Connection) -> None:
        """Data came while the connection was held: the leader reads it (not us, or flushes could nest)."""
        self.backlog.append((conn.fd, 0))
        self.wake_leader()

    def wake_leader(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"\0")

    def _accept(self, fd: int, stats: Recorder | None) -> None:
        listener = self.listeners.get(fd)
        if listener is None:
            return
        # socket.accept() wraps _accept() and reads the listener's family and type through properties that
        # build enum members, twice per connection; the numbers are the same every time, so take them once.
        # socket._accept is CPython's private accept: (fd, address), the socket object left to the caller.
        raw_accept = listener.sock._accept  # type: ignore[attr-defined]
        family, sock_type, proto = listener.numbers
        tcp = listener.kind == "tcp"
        make = listener.extra.get("connection", Connection)  # TLS, PROXY protocol: see tls.connection_factory
        now = monotonic()
        for _ in range(64):
            try:
                fd, peer = raw_accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_ERRORS:
                    # Out of descriptors or memory: stop accepting briefly instead of spinning.
                    errorlog.error("accept failed (%s); pausing accepts", os.strerror(exc.errno))
                    for listen_fd in self.listeners:
                        self.poller.remove(listen_fd)
                    self.accept_paused_until = now + 0.5
                return
            sock = socket.socket(family, sock_type, proto, fd)
            sock.setblocking(False)
            if len(self.conns) >= self.settings.max_connections:
                refuse(sock, self._overload)
                if stats is not None:
                    stats.refused(len(self._overload))
                continue
            if tcp:
                try:  # noqa: SIM105 - once per connection: contextlib.suppress would add three Python calls
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
                peer = (peer[0], str(peer[1]))  # the port as REMOTE_PORT writes it, once per connection
            else:
                peer = UNIX_PEER
            conn = make(sock, peer, self.new_parser(), now, self.settings.send_timeout)
            if not self.conns:
                self.wake_main()  # from now on stalls need watching: switch to the short tick
            self.conns[conn.fd] = conn
            self.poller.add(conn.fd)
            if stats is not None:
                stats.accepted()

    def retire_listeners(self, accepting: WorkerSeat | None = None) -> None:
        """Stop accepting: leave the poller, accept what the kernel had queued meanwhile (leader only), close.

        In that order because other worker processes may share the sockets: once they are out of
        our poller the kernel wakes the others for new connections, and the accept after that takes
        any connection whose wake-up came to us, which nobody else would pick up.
        """
        with self.leader_lock:  # the leader and, past the deadline, the main thread may both get here
            listeners = self.listeners
            for fd in listeners:
                self.poller.remove(fd)
            if accepting is not None:
                for fd in listeners:
                    self._accept(fd, accepting.stats)
            self.listeners = {}
            for listener in listeners.values():
                listener.close()

    def _on_readable(self, conn: Connection, me: WorkerSeat) -> bool:
        """Read once and serve what is complete; True when the connection was set aside again.

        Caller holds conn.lock.
        """
        now = monotonic()
        if conn.set_aside:
            # It was set aside with complete requests still buffered (a client pipelining without
            # reading its answers): serve those before reading more, so its buffer stays bounded.
            conn.set_aside = False
            conn.dirty = True  # and read once they are answered
            return self._serve(conn, now, me)
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except BlockingIOError:
            if conn.parser.buffered and not conn.draining:
                return self._serve(conn, now, me)  # requests set aside earlier are still waiting
            self._rearm(conn)
            return False
        except OSError:
            self.close_connection(conn)
            return False
        stats = me.stats
        if stats is not None:
            stats.bytes_in += len(data)
        if conn.draining:
            conn.drained += len(data)
            if not data or conn.drained >= _DRAIN_LIMIT:
                self.close_connection(conn)
            elif conn.hangup or len(data) == _RECV_SIZE:
                # Its last bytes and its FIN came as one event (a TLS client's close_notify, then the
                # close): read on to the EOF now, or the connection lingers until the drain deadline.
                conn.dirty = True
            else:
                self._rearm(conn)
            return False
        conn.last_io = now
        parser = conn.parser
        if not data:
            # The client is done sending, not listening (RFC 9112 9.6): what it asked before the EOF
            # is answered first, held answers included, then the 400 for a request the EOF cut off.
            try:
                parser.feed_eof()
            except ProtocolError as exc:
                self.reject(conn, exc, now, me)
                return False
            if not conn.flush():
                self._wait_out(conn, me)
            self.close_connection(conn)
            return False
        parser.feed(data)
        if len(data) == _RECV_SIZE or conn.hangup:
            conn.dirty = True  # more may be waiting than one read took (or the EOF): read again after serving
        return self._serve(conn, now, me)

    def _serve(self, conn: Connection, now: float, me: WorkerSeat) -> bool:
        """Answer the complete requests in the buffer, up to max_pipeline in a row; caller holds conn.lock.

        True when more were waiting and the connection went to the back of the backlog.
        """
        parser = conn.parser
        runner = self.runner
        stats = me.stats
        try:
            for _ in range(self._max_pipeline):
                try:
                    request = parser.next_request()
                except ProtocolError as exc:
                    self.reject(conn, exc, now, me)
                    return False
                if request is None:
                    break
                if conn.out:
                    conn.flush()  # earlier pipelined answers go out before this request runs, however long
                me.busy_since = now
                try:
                    keep = runner.run(request, conn.peer, conn, request.keep_alive)
                finally:
                    me.busy_since = 0.0
                conn.served += 1
                self.served += 1
                started, now = now, monotonic()
                if stats is not None:
                    stats.request(request.method, conn.status, now - started, conn.answered)
                conn.idle_since = conn.last_io = now
                conn.head_started = None
                if not keep:
                    conn.send_all(b"")  # the last answer goes out before our side closes
                    conn.start_draining(now)
                    self._rearm(conn)
                    return False
            else:
                if parser.buffered:
                    conn.set_aside = conn.queued = True
                    self.backlog.append(conn)  # more pipelined requests: let others go first
                    self.wake_leader()
                    return True
        except OSError:
            self.close_connection(conn)
            return False
        except Exception:
            errorlog.exception("serving a connection from %s failed", conn.peer[0])
            self.close_connection(conn)
            return False
        phase = parser.phase
        if phase is not Phase.IDLE:  # part of a next request is here, or its body is awaited
            if conn.head_started is None and phase is Phase.HEAD:
                conn.head_started = now
            if parser.take_continue() and not conn.send_nowait(CONTINUE):
                self.close_connection(conn)
                return False
        if self._rearm_needed:  # not with epoll: no call at all on the hot path
            self._rearm(conn)
        return False

    def reject(self, conn: Connection, error: ProtocolError, now: float, me: WorkerSeat | None = None) -> None:
        """A request we cannot parse: say why (problem+json), then close, since framing is lost.

        A worker (``me``) writes it behind the answers the connection holds, waiting for a slow reader
        as for any answer; the timeout sweep on the main thread must not wait, and holds none.
        """
        response = error_response(error.status, error.detail, date=self.runner.dates.now(),
                                  server=self.settings.server_header)
        if me is None:
            conn.send_nowait(response)
        else:
            conn.out += response
            if not conn.flush():
                self._wait_out(conn, me)
        stats = self.main_stats if me is None else me.stats
        if stats is not None:
            stats.protocol_error(error.status, len(response))
        if self.access_log is not None:
            self.access_log.log(conn.peer[0], "-", "-", "-", error.status, 0, 0.0, None, None, None)
        conn.start_draining(now)
        self._rearm(conn)

    def _rearm(self, conn: Connection) -> None:
        if not self._rearm_needed:
            return  # edge-triggered: the registration stays armed
        try:
            self.poller.rearm(conn.fd)
        except OSError:
            self.close_connection(conn)

    def close_connection(self, conn: Connection) -> None:
        """Forget first, then close, so the descriptor number is reused only once nothing refers to it.

        Caller holds conn.lock.
        """
        if conn.closed:
            return
        conn.closed = True
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        self.poller.forget(conn.fd)
        conn.close()


def make_signal_handler(reactor: Reactor) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        reactor.stop()

    return handler

"""The serving core: leader/followers over one poller, with hand-off only when a call stalls.

One worker thread at a time is the leader: it waits in the poller and handles whatever becomes
ready itself, inline: accept, read and parse, run the application, write the response. For fast
applications that means no thread hand-off at all, which in CPython costs more than parsing a
request does. Slow calls must not hold everyone else up, so the main thread watches the leader
(monitor.py): once the leader has spent ``STALL`` seconds inside one request, an idle worker is
promoted and takes over the poller; the old leader finishes its request and becomes a follower.
At most ``--threads`` requests run at once; idle, half-received and slow-reading connections are
parked in the poller and cost no thread.

On Linux a connection is registered edge-triggered, once (poller.py): each arrival is reported
once, so whoever is reported a connection reads until the kernel is empty or the connection is
set aside. Who may act on a connection is decided by ownership (connection.py), not by the
registration.

The parts, each with its own state and thread rules in its docstring:

==================  =====================================================  ==========================
part                owns                                                   threads
==================  =====================================================  ==========================
``Leadership``      the poller, who leads, idle seats, the backlog, pipes  any worker, the main thread
``Acceptor``        listeners, the connection limit, the refusal answer    the leader (main: retire)
``ConnectionTable`` fd -> connection, the counts                           leader adds, owners remove
``BatchWriter``     answers held for one flush                             the owners of those
``Sweeper``         deadlines: handshake, header, body, keep-alive, send   the main thread
``Monitor``         stall watching, the sweep's clock, the shutdown        the main thread
``Connection``      a client's stream, parser, kept answers, clocks        its owner
==================  =====================================================  ==========================

This module is the hot path: ``_lead``, ``_take``, ``_step`` and ``_serve`` run for every request.
The transport's speed tricks are listed here, each with its figure (instructions per request on the
serving thread, ``python -m loadtest.instructions``, CPython 3.11.7); nothing else in the transport
is there for speed:

- the loops bind what they call to locals once per leadership, not once per request;
- a connection's answer is kept and written with its batch (batch.py): its figure is in
  docs/internals.md ("Batched writes"), counted in wake-ups rather than instructions;
- ``_take`` claims and releases a connection inline rather than through methods of ``Connection``
  (the claim for an arrival exists only here; connection.py states the rule it follows), and with
  ``acquire``/``release`` rather than ``with lock:`` (nothing between them can raise), as do
  ``ConnectionTable.add``/``remove``: a keep-alive GET went from 81,933 to 80,134 instructions
  with ``acquire``/``release``, and from 80,171 to 79,326 without the two method calls;
- accepting without ``socket.accept()`` (fastpath.py): 162,676 -> 146,225 per new connection;
- ``PeerInfo`` is a slotted class with ``Final`` attributes, not a frozen dataclass, whose
  ``__init__`` costs about 4,000 instructions more per new connection (server/wsgi/peer.py);
- ``--max-requests`` is counted per seat (one writer each) and summed when read: exact, and no
  lock per request.

With ``--metrics-bind``, each thread counts into a recorder of its own (server/metrics) at points
that exist anyway: accept, read, a request done, a protocol error; no lock, a few increments.
"""

from __future__ import annotations

import functools
import select
import tempfile
import threading
from collections.abc import Callable
from time import monotonic

from .. import errorlog
from ..accesslog import AccessLog
from ..config import Settings
from ..metrics import ProcessRecorders, Recorder
from ..protocol import HeaderCache, Phase, ProtocolError, RequestParser
from ..protocol.writer import CONTINUE, error_response
from ..wsgi import WSGIRunner
from .acceptor import Acceptor, overload_answer
from .batch import BatchWriter
from .connection import HOLD_LIMIT, Connection
from .leadership import Leadership, WorkerSeat
from .listener import Listener
from .monitor import Monitor
from .sweeper import Sweeper
from .table import ConnectionTable

_RECV_SIZE = 65536
_POLL_TIMEOUT = 0.25
_DRAIN_LIMIT = 1 << 20  # bytes a closing connection may still send us before we cut it off
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0x2000)

# What one step on an owned connection ended with (``_step``).
_DONE = 0  # nothing more to read now; whole answers may be kept in ``out``
_AGAIN = 1  # read again: more may be waiting than one read took, or buffered requests were served
_SET_ASIDE = 2  # served max_pipeline requests in a row with more buffered: others go first
_PARKED = 3  # waiting for the client to take its answers (or closed)


class Reactor:
    """One serving process's parts, wired together; the worker threads run ``_work``, the main thread ``run``."""

    def __init__(self, listeners: list[Listener], runner: WSGIRunner, settings: Settings,
                 access_log: AccessLog | None, exclusive_accept: bool = False,
                 metrics: ProcessRecorders | None = None) -> None:
        self.runner = runner
        self.settings = settings
        self.access_log = access_log
        self.metrics = metrics
        self.seats = [WorkerSeat(metrics.threads[i] if metrics else None) for i in range(settings.threads)]
        self.main_stats = metrics.threads[-1] if metrics else None  # the main thread's row (timeouts)
        self.table = ConnectionTable()
        self.leadership = Leadership(self.seats)
        self.batch = BatchWriter(self.seats, self._write_held)
        # One parser per connection; the parsers share what new connections usually begin with.
        # A body beyond --max-body-in-memory waits in an anonymous file (protocol/body.py).
        limits = settings.limits()
        new_parser = functools.partial(RequestParser, limits, HeaderCache(limits), spill=tempfile.TemporaryFile)
        self.acceptor = Acceptor(listeners, self.table, self.leadership.poller,
                                 max_connections=settings.max_connections, send_timeout=settings.send_timeout,
                                 new_parser=new_parser, date=runner.dates.now, on_first=self.leadership.wake_main,
                                 exclusive=exclusive_accept)
        self.sweeper = Sweeper(self.table, settings, self)
        self.max_pipeline = settings.max_pipeline
        self.backlog = self.leadership.backlog  # the hot loop's shortcuts to parts' state (read-only references)
        self.held_queues = self.batch.queues
        self.rearm_needed = self.leadership.poller.needs_rearm
        self.stopping = False
        self.stop_deadline = 0.0
        self.on_tick: Callable[[float], None] | None = None  # the main loop calls it each time round

    @property
    def served(self) -> int:
        """Requests answered by this process: exact, each seat counts its own (read by the main thread)."""
        return sum(seat.served for seat in self.seats)

    # -- control (any thread, or a signal handler) -------------------------------------------------------

    def stop(self) -> None:
        """Begin graceful shutdown; safe from a signal handler."""
        self.runner.closing = True
        if not self.stopping:
            self.stop_deadline = monotonic() + self.settings.graceful_timeout
            self.stopping = True
        self.leadership.wake_main()

    def start(self) -> None:
        """Start the worker threads; the first one leads. Before the ready line, so it is printed by a whole server."""
        for index, seat in enumerate(self.seats):
            seat.thread = threading.Thread(target=self._work, args=(seat,), name=f"worker-{index}", daemon=True)
        self.leadership.begin()
        for seat in self.seats:
            assert seat.thread is not None
            seat.thread.start()

    def run(self) -> None:
        """The main thread's part (monitor.py); returns once shutdown is complete."""
        if self.seats[0].thread is None:
            self.start()
        Monitor(self).run()

    # -- worker threads ---------------------------------------------------------------------------------------

    def _work(self, seat: WorkerSeat) -> None:
        leadership = self.leadership
        while True:
            seat.gate.acquire()  # a follower waits here until promoted
            if leadership.done:
                return
            self._lead(seat)
            if not leadership.step_down(seat):
                return

    def _lead(self, seat: WorkerSeat) -> None:
        """Poll and serve inline until demoted.

        Polled events go into the shared backlog before any is handled, so when this thread gets
        stuck in a slow call the next leader finds the rest there instead of them waiting behind it.
        """
        leadership = self.leadership
        poll = leadership.poller.poll
        backlog = leadership.backlog
        get = self.table.by_fd.get
        take = self._take
        held = self.batch.queues
        acceptor = self.acceptor
        while leadership.leader is seat and not leadership.done:
            if self.stopping and acceptor.listeners:
                acceptor.retire(seat.stats, accepting=True)
            if not backlog:
                if any(held):
                    self.batch.flush()  # and look again: a connection written may be back in the backlog
                else:
                    try:
                        backlog.extend(poll(_POLL_TIMEOUT))
                    except OSError:
                        break  # poller closed at shutdown
                continue
            try:
                fd, events = backlog.popleft()
            except IndexError:
                continue
            conn = get(fd)
            if conn is None:
                if not acceptor.accept(fd, seat.stats):
                    leadership.is_wake_pipe(fd)
                continue
            if not events:
                # requeued or set aside (a client that pipelined more than max_pipeline): whatever
                # else is ready goes first
                try:  # noqa: SIM105 - per set-aside connection
                    backlog.extend(poll(0))
                except OSError:
                    pass
            take(conn, seat, events)
        self.batch.flush()  # demoted or stopping: what this thread holds must not wait for it to lead again

    def _take(self, conn: Connection, seat: WorkerSeat, events: int) -> None:
        """Claim a ready connection and work on it until nothing is left to do.

        The claim, and the release at the end, follow connection.py's rule: under the connection's
        lock, an owned connection gets the note instead of a second owner, and the owner keeps it
        while there is a note. They are written out here, not called (see the module docstring).
        """
        lock = conn.lock
        lock.acquire()  # claim
        if events & _HANGUP:  # data and FIN can come as one event: read on to the EOF
            conn.hangup = True
        if conn.owner is not None:
            conn.readable_again = True  # its owner will see the note and read again
            lock.release()
            return
        conn.owner = seat
        lock.release()
        step = self._step
        while True:
            try:
                outcome = step(conn, seat)
                while outcome == _AGAIN:
                    outcome = step(conn, seat)
                if conn.out and not conn.closed:
                    if outcome == _DONE:
                        if self.backlog or any(self.held_queues):
                            self.batch.hold(conn, seat)
                            return  # the batch owns it now
                        if not conn.flush():  # a batch of one, written at once: no detour
                            self.park(conn)
                    elif outcome == _SET_ASIDE and not conn.flush():
                        self.park(conn)  # backpressure: the buffered requests wait for the client to read
                if outcome == _SET_ASIDE and not conn.parked:
                    self.leadership.requeue(conn)
                    self.batch.flush()  # the answers held for others do not wait behind this client
            except OSError:
                self.close_connection(conn)
            except BaseException:
                self.let_go(conn)
                raise
            lock.acquire()  # release, unless it became readable meanwhile
            if conn.readable_again:
                conn.readable_again = False
                lock.release()
                continue
            conn.owner = None
            lock.release()
            return

    def _step(self, conn: Connection, seat: WorkerSeat) -> int:
        """Write what waits, then read once and serve what is complete; the caller owns ``conn``."""
        if conn.parked:
            if not conn.flush():
                conn.parked_since = monotonic()
                return _PARKED
            self.unpark(conn)
            if conn.drain_when_written:
                conn.start_draining(monotonic())
                return _AGAIN  # read on to the client's EOF (lingering close)
        if conn.refusing and not conn.draining:
            return self._refuse(conn, seat)
        now = monotonic()
        if conn.requests_waiting:
            # Complete requests are still buffered (set aside for fairness, or stopped by backpressure):
            # serve those before reading more, so its buffer stays bounded.
            conn.requests_waiting = False
            outcome = self._serve(conn, now, seat)
            return _AGAIN if outcome == _DONE else outcome  # and then read what came meanwhile
        try:
            data = conn.stream.recv(_RECV_SIZE)
        except BlockingIOError:
            if conn.parser.buffered and not conn.draining:
                return self._serve(conn, now, seat)  # requests set aside earlier are still waiting
            self._rearm(conn)
            return _DONE
        stats = seat.stats
        if stats is not None:
            stats.bytes_in += len(data)
        if conn.draining:
            conn.drained += len(data)
            if not data or conn.drained >= _DRAIN_LIMIT:
                self.close_connection(conn)
                return _PARKED
            if conn.hangup or len(data) == _RECV_SIZE:
                # Its last bytes and its FIN came as one event (a TLS client's close_notify, then the
                # close): read on to the EOF now, or the connection lingers until the drain deadline.
                return _AGAIN
            self._rearm(conn)
            return _DONE
        conn.last_io = now
        parser = conn.parser
        if not data:
            # The client is done sending, not listening (RFC 9112 9.6): what it asked before the EOF
            # is answered first, kept answers included, then the 400 for a request the EOF cut off.
            conn.hangup = True
            try:
                parser.feed_eof()
            except ProtocolError as exc:
                return self.reject(conn, exc, now, seat)
            return self._finish(conn, now)
        parser.feed(data)
        outcome = self._serve(conn, now, seat)
        if (len(data) == _RECV_SIZE or conn.hangup) and outcome == _DONE:
            return _AGAIN  # more may be waiting than one read took (or the EOF): read again after serving
        return outcome

    def _serve(self, conn: Connection, now: float, seat: WorkerSeat) -> int:
        """Answer the complete requests in the buffer, up to max_pipeline in a row; the caller owns ``conn``."""
        parser = conn.parser
        runner = self.runner
        stats = seat.stats
        try:
            for _ in range(self.max_pipeline):
                try:
                    request = parser.next_request()
                except ProtocolError as exc:
                    return self.reject(conn, exc, now, seat)
                if request is None:
                    break
                if conn.out:
                    conn.flush()  # earlier pipelined answers go out before this request runs, however long
                seat.busy_since = now
                try:
                    keep = runner.run(request, conn.peer, conn, request.keep_alive)
                finally:
                    seat.busy_since = 0.0
                conn.served += 1
                seat.served += 1
                started, now = now, monotonic()
                if stats is not None:
                    stats.request(request.method, conn.status, now - started, conn.answered)
                conn.idle_since = conn.last_io = now
                conn.head_started = None
                if not keep:
                    return self._finish(conn, now)
                if len(conn.out) > HOLD_LIMIT and not conn.flush():
                    # Backpressure: the client is not taking its answers, so the requests still buffered
                    # wait until it has; what the connection keeps stays under HOLD_LIMIT plus one answer.
                    # (Checked after each answer, the one thing that grows ``out`` here.)
                    conn.requests_waiting = True
                    self.park(conn)
                    return _PARKED
            else:
                if parser.buffered:
                    conn.requests_waiting = True
                    return _SET_ASIDE  # more pipelined requests: let others go first
        except OSError:
            self.close_connection(conn)
            return _PARKED
        except Exception:
            errorlog.exception("serving a connection from %s failed", conn.peer.address)
            self.close_connection(conn)
            return _PARKED
        phase = parser.phase
        if phase is not Phase.IDLE:  # part of a next request is here, or its body is awaited
            if conn.head_started is None and phase is Phase.HEAD:
                conn.head_started = now
            if parser.take_continue() and not conn.send_nowait(CONTINUE):
                self.close_connection(conn)
                return _PARKED
        if self.rearm_needed:  # not with epoll: no call at all on the hot path
            self._rearm(conn)
        return _DONE

    def _finish(self, conn: Connection, now: float) -> int:
        """The connection's last answer is kept: write it, then close our side (or park until it is taken)."""
        if conn.start_draining(now):
            self._rearm(conn)
            return _AGAIN if conn.hangup else _DONE
        self.park(conn)
        return _PARKED

    def _refuse(self, conn: Connection, seat: WorkerSeat) -> int:
        """Over the limit on a TLS listener: once the handshake is done, 503 inside TLS (acceptor.py)."""
        try:
            conn.stream.recv(_RECV_SIZE)  # drives the handshake; what a client sends after it is not read
        except BlockingIOError:
            if not conn.handshake_done:
                self._rearm(conn)
                return _DONE
        answer = overload_answer(self.runner.dates.now())
        conn.send_response(answer)
        if seat.stats is not None:
            seat.stats.bytes_out += len(answer)  # counted as refused when it was accepted
        return self._finish(conn, monotonic())  # it drains like any closing connection (and stays counted apart)

    def reject(self, conn: Connection, error: ProtocolError, now: float, seat: WorkerSeat | None = None) -> int:
        """A request we cannot parse, or a deadline passed (the sweep: no seat): say why, then close.

        The problem+json answer goes behind the answers the connection keeps; nobody waits for a slow
        reader: what the client does not take is parked like any answer, and the send timeout applies.
        """
        response = error_response(error.status, error.detail, date=self.runner.dates.now(),
                                  server=self.settings.server_header)
        conn.send_response(response)
        stats = self.main_stats if seat is None else seat.stats
        if stats is not None:
            stats.protocol_error(error.status, len(response))
        if self.access_log is not None:
            self.access_log.log(conn.peer.address, "-", "-", "-", error.status, 0, 0.0, None, None, None)
        return self._finish(conn, now)

    # -- ownership and the poller: what any owner (a worker, the batch writer, the sweep) may do -------------

    def park(self, conn: Connection) -> None:
        """The client does not take its answers: wait in the poller for writability, not in a thread."""
        if conn.parked or conn.closed:
            return
        conn.parked = True
        conn.parked_since = monotonic()
        try:
            self.leadership.poller.want_write(conn.fd)
        except OSError:
            self.close_connection(conn)

    def unpark(self, conn: Connection) -> None:
        conn.parked = False
        try:
            self.leadership.poller.read_only(conn.fd)
        except OSError:
            self.close_connection(conn)

    def let_go(self, conn: Connection) -> None:
        """Give up a connection; if it was reported readable meanwhile, the leader gets it (the batch, the sweep)."""
        noted = False
        while not conn.release():
            noted = True
        if noted and not conn.closed:
            self.leadership.requeue(conn)

    def _write_held(self, conn: Connection) -> None:
        """One connection out of a batch (batch.py): write without waiting, park what is left, let it go."""
        try:
            if not conn.flush():
                self.park(conn)
        except OSError:
            self.close_connection(conn)
        self.let_go(conn)

    def _rearm(self, conn: Connection) -> None:
        if not self.rearm_needed:
            return  # edge-triggered: the registration stays armed
        try:
            self.leadership.poller.rearm(conn.fd)
        except OSError:
            self.close_connection(conn)

    def close_connection(self, conn: Connection) -> None:
        """Forget first, then close, so the descriptor number is reused only once nothing refers to it.

        The caller owns ``conn``.
        """
        if conn.closed:
            return
        conn.closed = True
        self.table.remove(conn)
        self.leadership.poller.forget(conn.fd)
        conn.close()


def make_signal_handler(reactor: Reactor) -> Callable[[int, object], None]:
    def handler(signum: int, frame: object) -> None:
        reactor.stop()

    return handler


__all__ = ["Reactor", "Recorder", "make_signal_handler"]

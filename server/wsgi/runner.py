"""Run one request through a WSGI application and send its response.

Implements start_response (with the exc_info rules), the legacy write()
callable, iteration with close(), Content-Length enforcement and
``wsgi.file_wrapper`` bodies. Sending is delegated to a ``Sink``, so this
module never touches a socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from time import time as _clock
from typing import Protocol

from .. import errorlog
from ..accesslog import AccessLog
from ..protocol import Request, ResponsePlan
from ..protocol.response import Fields, ResponseCache
from ..protocol.writer import LAST_CHUNK, chunk, error_response, http_date
from .environ import EnvironBuilder
from .file_wrapper import FileWrapper
from .peer import PeerInfo
from .pep3333 import ExcInfo, WSGIApplication

Send = Callable[[bytes], None]


class Sink(Protocol):
    """Where answers go: the transport's side of a connection."""

    def send_all(self, data: bytes) -> None:
        """Write now: part of a streamed answer, which the client may be waiting for piece by piece."""

    def send_response(self, data: bytes) -> None:
        """A whole answer; the transport may hold it briefly to write it together with others."""

    def more_requests_sent(self) -> bool:
        """Asked only while the server is closing: has the client already sent another request?

        If so, this answer keeps the connection open so that request is answered too;
        closing would make the client find out and retry it, which only idempotent ones may.
        """

    def send_parts(self, head: bytes, body: bytes) -> None:
        """A large answer, written now without joining head and body first (a copy of the whole body);
        used for bodies above _JOIN_LIMIT."""

    def send_file(self, head: bytes, fd: int, offset: int, count: int) -> int:
        """Write the head, then count bytes of the file from offset; only when ``sendfile_ok``.

        Returns fewer than count only when the file ends first.
        """

    # Whether send_file may be used (False where the kernel cannot copy to the socket, as under TLS).
    sendfile_ok: bool

    # Set by the runner once an answer is complete, for the transport's metrics: its status code and
    # the bytes handed over (head included).
    status: int
    answered: int


# Above this, head and body go to the sink as two pieces: joining them would copy the body (1 MiB
# at a time for a large download), while for a small answer one joined write is the cheaper one.
_JOIN_LIMIT = 32768


class DateCache:
    """The Date header changes once a second; formatting it per request would be waste."""

    __slots__ = ("_end", "_start", "_value")

    def __init__(self) -> None:
        self._start = self._end = 0.0
        self._value = ""

    def now(self) -> str:
        # Two float comparisons against the current second's bounds cost less than int() per request;
        # a clock set back falls below _start and is followed at once, as is one set forward.
        now = _clock()
        if not self._start <= now < self._end:
            second = int(now)
            self._value = http_date(second)
            self._start, self._end = float(second), float(second + 1)
        return self._value


class ResponseAborted(Exception):
    """The response could not be completed; the connection must be closed."""


class _Exchange:
    """The state of one request/response pair as the application drives it."""

    __slots__ = ("bytes_sent", "fields", "hint", "keep_alive", "plan", "request", "runner", "sink", "wrote")

    def __init__(self, runner: WSGIRunner, request: Request, sink: Sink, keep_alive: bool) -> None:
        self.runner = runner
        self.request = request
        self.sink = sink
        self.wrote = 0  # bytes handed to the sink, head and framing included
        self.keep_alive = keep_alive
        self.fields: Fields | None = None  # from start_response; None again if the answer became a 500
        self.plan: ResponsePlan | None = None
        self.bytes_sent = 0
        self.hint: int | None = None  # the body's size if known before it is sent (a file's)

    def send(self, data: bytes) -> None:
        self.wrote += len(data)
        self.sink.send_all(data)

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.plan is not None:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.fields is not None:
            raise AssertionError("start_response called a second time without exc_info")
        # raises here, while the application can still react
        self.fields = self.runner.responses.check_fields(status, headers)
        return self.write

    def begin(self, length_hint: int | None) -> ResponsePlan:
        fields = self.fields
        if fields is None:
            raise AssertionError("the application returned without calling start_response")
        runner = self.runner
        http11, method = self.request.http11, self.request.method
        keep = self.keep_alive and (not runner.closing or self.sink.more_requests_sent())
        self.plan = runner.responses.frame(fields, http11, method == "HEAD", keep, length_hint, runner.dates.now(),
                                           runner.server_header)
        return self.plan

    def write(self, data: bytes) -> None:
        """Body bytes, either from the legacy write() callable or from the iterable."""
        if not isinstance(data, bytes | bytearray):
            raise TypeError(f"WSGI body data must be bytes, got {type(data).__name__}")
        plan = self.plan
        head = b""
        if plan is None:
            plan = self.begin(self.hint)
            head = plan.head
        if not plan.send_body or not data:
            if head:
                self.send(head)
            return
        if plan.content_length is not None:
            room = plan.content_length - self.bytes_sent
            if len(data) > room:
                data = data[:room]
                self.keep_alive = False  # the plan is shared (cached); the exchange decides
                errorlog.warning("the application sent more than its Content-Length of %d; body truncated "
                                 "and connection closed", plan.content_length)
            self.bytes_sent += len(data)
            self.send(head + data)
        else:
            self.bytes_sent += len(data)
            self.send(head + chunk(data) if plan.chunked else head + data)

    def finish(self) -> ResponsePlan:
        plan = self.plan
        if plan is None:
            plan = self.begin(self.hint or 0)
            self.send(plan.head)
        if plan.chunked:
            self.send(LAST_CHUNK)
        elif plan.send_body and plan.content_length is not None and self.bytes_sent < plan.content_length:
            raise ResponseAborted(f"application sent {self.bytes_sent} of its declared "
                                  f"{plan.content_length} bytes")
        return plan


class WSGIRunner:
    """Everything needed to answer requests with one application."""

    def __init__(self, app: WSGIApplication, environ: EnvironBuilder, *,
                 server_header: str, access_log: AccessLog | None) -> None:
        self.app = app
        self.environ = environ
        self.server_header = server_header
        self.access_log = access_log
        self.dates = DateCache()
        self.responses = ResponseCache()  # this server's checked header lists and response heads
        # Set at shutdown: from then on each connection's last answer carries Connection: close.
        self.closing = False

    def run(self, request: Request, peer: PeerInfo, sink: Sink, keep_alive: bool) -> bool:
        """Answer one request; True when the connection may carry another.

        Raises OSError when sending fails (the client went away).
        """
        log = self.access_log
        started = time.perf_counter() if log is not None else 0.0
        exchange = _Exchange(self, request, sink, keep_alive)
        env = self.environ.build(request, peer)
        try:
            result = self.app(env, exchange.start_response)
            if type(result) is list and exchange.fields is not None and exchange.plan is None:
                # The common case: the whole body is known, so head and body go out in one write.
                body = result[0] if len(result) == 1 and type(result[0]) is bytes else b"".join(result)
                size = len(body)
                plan = exchange.begin(size)
                head = plan.head
                if plan.send_body and body:
                    exchange.bytes_sent = size
                    if size > _JOIN_LIMIT:
                        sink.send_parts(head, body)
                    else:
                        sink.send_response(head + body)
                    sink.answered = len(head) + size
                else:
                    sink.send_response(head)
                    sink.answered = len(head)
            elif type(result) is FileWrapper and (fields := exchange.fields) is not None:
                plan = self._send_file(result, exchange, fields, sink)
                sink.answered = exchange.wrote
            else:
                plan = self._stream(result, exchange)
                sink.answered = exchange.wrote
            keep = exchange.keep_alive and plan.keep_alive
        except ResponseAborted as exc:
            errorlog.error("%s %s: %s; closing the connection", request.method, request.target, exc)
            keep = False
            sink.answered = exchange.wrote
        except OSError:
            raise
        except Exception:
            errorlog.exception("%s %s: the application failed", request.method, request.target)
            keep = False
            sink.answered = exchange.wrote
            if exchange.plan is None:
                exchange.fields = None
                answer = error_response(500, "the application failed; the error is in the server log",
                                        date=self.dates.now(), server=self.server_header)
                sink.send_response(answer)
                sink.answered = len(answer)
        finally:
            if request.body_file is not None:
                request.body_file.close()  # the spilled body: its file is gone with it (protocol/body.py)
        fields = exchange.fields
        status = sink.status = fields[1] if fields is not None else 500
        if log is not None:
            log.log(env["REMOTE_ADDR"], request.method, request.target, request.version, status,
                    exchange.bytes_sent, time.perf_counter() - started, request.header("referer"),
                    request.header("user-agent"), request.header("x-request-id"))
        return keep

    @staticmethod
    def _send_file(wrapper: FileWrapper, exchange: _Exchange, fields: Fields, sink: Sink) -> ResponsePlan:
        """A wsgi.file_wrapper body: sendfile when the file and the sink allow it, else read in blocks."""
        try:
            fd, offset, available = wrapper.region()
            declared = fields[3]  # the application's Content-Length, if it gave one
            length = declared if declared is not None else available
            exchange.hint = available
            if fd >= 0 and length is not None and sink.sendfile_ok:
                plan = exchange.begin(available)
                if not plan.send_body:
                    sink.send_response(plan.head)
                    exchange.wrote = len(plan.head)
                    return plan
                exchange.wrote = len(plan.head)  # counted as handed over even if the client leaves midway
                exchange.bytes_sent = sent = sink.send_file(plan.head, fd, offset, length)
                exchange.wrote += sent
                if sent < length:
                    raise ResponseAborted(f"the file ended after {sent} of its {length} bytes")
                return plan
            if exchange.request.method != "HEAD":
                read, size, remaining = wrapper.filelike.read, wrapper.block_size, length
                while remaining is None or remaining > 0:
                    block = read(size if remaining is None else min(size, remaining))
                    if not block:
                        break
                    exchange.write(block)
                    if remaining is not None:
                        remaining -= len(block)
            return exchange.finish()
        finally:
            close = getattr(wrapper, "close", None)
            if close is not None:
                close()

    @staticmethod
    def _stream(result: Iterable[bytes], exchange: _Exchange) -> ResponsePlan:
        """Anything but a list: send each piece as it comes, then close the iterable (PEP 3333)."""
        try:
            if exchange.request.method != "HEAD":
                for data in result:
                    if data:
                        exchange.write(data)
            return exchange.finish()
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

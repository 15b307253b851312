"""``GET /metrics`` on a listener of its own, served by one background thread.

Its own port, never the application's: nginx proxies the application's port,
so a metrics path there would be public; on a separate port it is reachable
only where that port is (the compose network, not the published side).

Scrapes are rare (every few seconds) and tiny, but a client on that port may
be slow or hostile, so no client can hold up another. The thread (``metrics``)
owns every socket here and runs a small event loop: non-blocking sockets in a
``selectors`` selector, each client with its own parser and its own deadline,
``CLIENT_TIMEOUT`` seconds from its accept for the whole exchange (reading
the request and writing the answer), not per ``recv``. A client dripping a byte
a second is cut when its deadline passes while scrapes arriving meanwhile are
answered at once. At most ``MAX_CLIENTS`` connections are kept; one more
evicts the oldest, so a flood of idle connections cannot lock scrapes out
either: a real scrape is answered within milliseconds of its arrival, long
before 64 newer connections push it out. The request is parsed by the
server's own parser, with small limits.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable

from .. import errorlog
from ..protocol import Limits, ProtocolError, RequestParser
from ..protocol.writer import error_response, http_date
from .exposition import CONTENT_TYPE

CLIENT_TIMEOUT = 2.0  # seconds for one whole exchange, from accept to the last byte of the answer
MAX_CLIENTS = 64
_LIMITS = Limits(max_request_line=2048, max_header_count=50, max_header_size=2048, max_headers_total=16384,
                 max_body_size=0)


class _Client:
    """One scrape connection: its parser, its deadline and what is left to send."""

    __slots__ = ("deadline", "out", "parser", "sock")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.parser = RequestParser(_LIMITS)
        self.out = b""  # the answer, once the request is complete; the client is then only written to


class MetricsEndpoint:
    """A listening socket and the thread that answers it with ``render()``."""

    def __init__(self, sock: socket.socket, render: Callable[[], bytes], *, timeout: float = CLIENT_TIMEOUT,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.sock = sock
        self.render = render
        self.timeout = timeout
        self.max_clients = max_clients
        self._clients: dict[int, _Client] = {}  # fd -> client, in accept order; the metrics thread's only
        self._thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    @property
    def address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening (a forked worker drops its inherited copy this way too)."""
        with contextlib.suppress(OSError):
            self.sock.close()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            self.sock.setblocking(False)
            selector.register(self.sock, selectors.EVENT_READ)
        except (OSError, ValueError):
            return  # closed before the thread started
        while True:
            now = time.monotonic()
            wait = min((c.deadline for c in self._clients.values()), default=now + 1.0) - now
            try:
                ready = selector.select(max(wait, 0.0))
            except (OSError, ValueError):
                break
            if self.sock.fileno() < 0:
                break  # closed at shutdown
            for key, _ in ready:
                try:
                    if key.fileobj is self.sock:
                        self._accept(selector)
                    elif key.fd in self._clients:  # else dropped since select() returned (evicted)
                        self._step(selector, self._clients[key.fd])
                except Exception:  # a bug here must not stop the endpoint
                    errorlog.exception("metrics endpoint: a scrape failed")
            now = time.monotonic()
            for client in [c for c in self._clients.values() if c.deadline <= now]:
                self._drop(selector, client)  # too slow: its whole exchange gets one deadline
        for client in list(self._clients.values()):
            self._drop(selector, client)
        selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> None:
        for _ in range(16):
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # closed at shutdown, or out of descriptors: the next scrape tries again
            sock.setblocking(False)
            if len(self._clients) >= self.max_clients:
                self._drop(selector, next(iter(self._clients.values())))  # the oldest goes
            client = _Client(sock, time.monotonic() + self.timeout)
            self._clients[sock.fileno()] = client
            selector.register(sock, selectors.EVENT_READ)

    def _step(self, selector: selectors.BaseSelector, client: _Client) -> None:
        """The client is readable (request) or writable (answer): do what can be done without waiting."""
        if not client.out:
            try:
                data = client.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(selector, client)
                return
            answer = self._answer(client.parser, data)
            if answer is None:
                return  # the request is not complete yet
            if not answer:
                self._drop(selector, client)
                return
            client.out = answer
            selector.modify(client.sock, selectors.EVENT_WRITE)
        try:
            sent = client.sock.send(client.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(selector, client)
            return
        client.out = client.out[sent:]
        if not client.out:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)
            self._drop(selector, client)

    def _drop(self, selector: selectors.BaseSelector, client: _Client) -> None:
        self._clients.pop(client.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            selector.unregister(client.sock)
        client.sock.close()

    def _answer(self, parser: RequestParser, data: bytes) -> bytes | None:
        """The answer once ``data`` completes a request; None while it is incomplete; b"" when the client left."""
        try:
            if not data:
                parser.feed_eof()
                return b""
            parser.feed(data)
            request = parser.next_request()
        except ProtocolError as exc:
            return error_response(exc.status, exc.detail, date=http_date(time.time()))
        if request is None:
            return None
        if request.path != "/metrics":
            return error_response(404, "metrics are at /metrics", date=http_date(time.time()))
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "use GET", date=http_date(time.time()), extra="Allow: GET, HEAD")
        body = self.render()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
                f"Date: {http_date(time.time())}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode()
        return head if request.method == "HEAD" else head + body

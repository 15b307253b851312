"""``GET /metrics`` on a listener of its own, served by one background thread.

Its own port, never the application's: nginx proxies the application's port,
so a metrics path there would be public; on a separate port it is reachable
only where that port is (the compose network, not the published side).

Scrapes are rare (every few seconds) and tiny, so one thread answers them one
at a time with blocking sockets and a short timeout; a client that stalls
holds the next scrape up by at most ``_CLIENT_TIMEOUT``. The request is parsed
by the server's own parser, with small limits.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable

from ..protocol import Limits, ProtocolError, RequestParser
from ..protocol.writer import error_response, http_date
from .exposition import CONTENT_TYPE

_CLIENT_TIMEOUT = 2.0
_LIMITS = Limits(max_request_line=2048, max_header_count=50, max_header_size=2048, max_headers_total=16384,
                 max_body_size=0)


class MetricsEndpoint:
    """A listening socket and the thread that answers it with ``render()``."""

    def __init__(self, sock: socket.socket, render: Callable[[], bytes]) -> None:
        self.sock = sock
        self.render = render
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
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # closed at shutdown
            with client:
                try:
                    client.settimeout(_CLIENT_TIMEOUT)
                    client.sendall(self._answer(client))
                except OSError:
                    pass
                except Exception:  # a bug here must not stop the endpoint
                    import traceback

                    traceback.print_exc(file=sys.stderr)

    def _answer(self, client: socket.socket) -> bytes:
        parser = RequestParser(_LIMITS)
        request = None
        try:
            while request is None:
                data = client.recv(4096)
                if not data:
                    parser.feed_eof()
                    return b""
                parser.feed(data)
                request = parser.next_request()
        except ProtocolError as exc:
            return error_response(exc.status, exc.detail, date=http_date(time.time()))
        if request.path != "/metrics":
            return error_response(404, "metrics are at /metrics", date=http_date(time.time()))
        if request.method not in ("GET", "HEAD"):
            return error_response(405, "use GET", date=http_date(time.time()), extra="Allow: GET, HEAD")
        body = self.render()
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {CONTENT_TYPE}\r\nContent-Length: {len(body)}\r\n"
                f"Date: {http_date(time.time())}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode()
        return head if request.method == "HEAD" else head + body

"""Clients of the tests' own: a raw socket client with a minimal HTTP/1.1 reader, one-shot requests, and
the kernel's count of bytes a loopback server has not read yet (ReceiveQueue)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import struct
from urllib.parse import urlsplit


class RawClient:
    """A raw TCP client that reads HTTP responses with its own minimal parser.

    Deliberately independent of the server's protocol code, so the tests do
    not check the server with the server's own parser.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    @classmethod
    def connect(cls, address: tuple[str, int], timeout: float = 5.0, tls: ssl.SSLContext | None = None
                ) -> RawClient:
        """A TCP connection, or a TLS one (handshake done) when given a client context."""
        sock = socket.create_connection(address, timeout=timeout)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname="localhost")
            except BaseException:
                sock.close()
                raise
        return cls(sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def half_close(self) -> None:
        """Close our sending side (the server reads EOF) and keep reading its answers."""
        self.sock.shutdown(socket.SHUT_WR)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def _need(self, what: str) -> None:
        if not self._fill():
            raise ConnectionError(f"connection closed {what}; got {self.buffer[:200]!r}")

    def read_response(self, timeout: float = 5.0, head_request: bool = False
                      ) -> tuple[int, dict[str, str], bytes]:
        """One response: (status, headers with lower-case names, body)."""
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buffer:
            self._need("before a full response head")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if head_request or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "content-length" in headers:
            length = int(headers["content-length"])
            while len(self.buffer) < length:
                self._need("mid-body")
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return status, headers, body
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return status, headers, self._read_chunked()
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return status, headers, body

    def _read_chunked(self) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                self._need("mid-chunk")
            size_line, _, self.buffer = self.buffer.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                while not (self.buffer.startswith(b"\r\n") or b"\r\n\r\n" in self.buffer):
                    self._need("in trailers")
                if self.buffer.startswith(b"\r\n"):
                    self.buffer = self.buffer[2:]
                else:
                    self.buffer = self.buffer.partition(b"\r\n\r\n")[2]
                return body
            while len(self.buffer) < size + 2:
                self._need("mid-chunk")
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]

    def read_until(self, marker: bytes, timeout: float = 5.0) -> None:
        """Receive until ``marker`` has arrived (it stays buffered for read_response)."""
        self.sock.settimeout(timeout)
        while marker not in self.buffer:
            self._need(f"before {marker!r}")

    def request(self, data: bytes, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
        self.send(data)
        return self.read_response(timeout=timeout, head_request=data.startswith(b"HEAD "))

    def is_closed(self, timeout: float = 3.0) -> bool:
        """True when the server closed the connection (EOF or reset) within ``timeout``."""
        if self.buffer:
            return False
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except TimeoutError:
            return False
        except (ConnectionResetError, ssl.SSLEOFError):
            return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def read_to_eof(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection; a reset also ends it."""
    data = b""
    sock.settimeout(timeout)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def get(path: str, extra: str = "") -> bytes:
    """A raw HTTP/1.1 GET request, with extra header lines (each ending in CRLF) if given."""
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n{extra}\r\n".encode()


def fetch(url: str, path: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None, source: str | None = None,
          timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection with the standard library's client: (status, lower-case headers, body)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise ValueError(f"no host in {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout,
                                      source_address=(source, 0) if source else None)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


class ReceiveQueue:
    """How many bytes the server side of a loopback TCP connection has received but not read yet.

    Asked of the kernel by sock_diag netlink (an exact lookup, about 10 us); /proc/net/tcp lists every
    socket on the machine and takes milliseconds to read.
    """

    def __init__(self, server: tuple[str, int], client: tuple[str, int]) -> None:
        sockid = struct.pack("!HH16s16s", server[1], client[1], socket.inet_aton(server[0]) + bytes(12),
                             socket.inet_aton(client[0]) + bytes(12))
        sockid += struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)  # any interface, no cookie
        request = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        self._message = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, 1, 0, 0) + request
        self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)

    def unread(self) -> int:
        self._netlink.send(self._message)
        answer = self._netlink.recv(65536)
        kind = struct.unpack_from("=H", answer, 4)[0]
        assert kind == _SOCK_DIAG_BY_FAMILY, f"sock_diag answered message type {kind}"
        return int(struct.unpack_from("=I", answer, _RQUEUE_AT)[0])

    def close(self) -> None:
        self._netlink.close()


_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_RQUEUE_AT = 16 + 4 + 48 + 4  # netlink header, inet_diag_msg's family..retrans, its socket id, expires

"""Build the PEP 3333 environ for one request."""

from __future__ import annotations

import io
import os
import sys
import threading
from typing import Any
from urllib.parse import unquote_to_bytes

from ..protocol import Request
from .file_wrapper import FileWrapper
from .peer import PeerInfo
from .proxy import TrustedProxies

# Server-specific environ key (PEP 3333: prefixed with the server's name), True while the server drains
# before shutting down (--drain-delay); absent otherwise. Applications read it with environ.get().
DRAINING = "calc_server.draining"



class EnvironBuilder:
    """Holds what is the same for every request, so each request copies one dict and fills in the rest."""

    def __init__(self, *, server_name: str, server_port: int, proxies: TrustedProxies, multiprocess: bool,
                 script_name: str = "") -> None:
        self.proxies = proxies
        self.script_name = script_name.rstrip("/")
        self.base: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "SERVER_NAME": server_name,
            "SERVER_PORT": str(server_port),
            "SCRIPT_NAME": self.script_name,
            "SERVER_SOFTWARE": "calc-server",
            "wsgi.input_terminated": True,
            "wsgi.file_wrapper": FileWrapper,
            # set for each request; present here so that copying the dict sizes it for them
            "REQUEST_METHOD": "", "PATH_INFO": "", "QUERY_STRING": "", "SERVER_PROTOCOL": "", "REQUEST_URI": "",
            # The scheme is the listener's: "http" here, "https" on a TLS connection (peer.tls), or
            # what a trusted proxy's X-Forwarded-Proto says (build). Never the request target's: an
            # absolute-form "GET https://host/ HTTP/1.1" on a plain port is still http (as gunicorn has it).
            "RAW_URI": "", "wsgi.input": None, "wsgi.url_scheme": "http", "REMOTE_ADDR": "", "REMOTE_PORT": "",
        }
        # Every request adds HTTP_HOST at least, and a dict holding these 21 keys is full: the first
        # key added would make each request's copy grow its table. One key more and removed leaves the
        # base in the next size up with one unused entry, which dict.copy() still clones as it is.
        # Figure (loadtest.instructions at eb53be5): keep-alive GET 79,231 -> 78,217 instructions per
        # request, a proxied GET (the ids row) 96,113 -> 95,033.
        self.base["_room"] = None
        del self.base["_room"]
        # Header name (lower case) -> environ key, or "" for names the environ leaves out. Filled as
        # names are seen, up to _KEYS_LIMIT, so the usual names cost one lookup instead of three string
        # operations. Shared by every worker thread: lookups take no lock, inserts take _keys_lock (a
        # dict operation is atomic with or without the GIL, PEP 703), and a lost race computes a key twice.
        self._keys: dict[str, str] = {"content-type": "CONTENT_TYPE"}
        self._keys_lock = threading.Lock()

    def announce_draining(self) -> None:
        """From now on every request's environ has ``calc_server.draining`` True (the server's lame duck,
        server/transport/lame_duck.py); a health check answers that it is going away. One key added to
        the shared base dict: requests pay nothing for it, before or after."""
        self.base[DRAINING] = True

    def build(self, request: Request, peer: PeerInfo) -> dict[str, Any]:
        """The environ of one request from ``peer``, as the transport learnt it (server/wsgi/peer.py)."""
        path = request.path
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        script_name = self.script_name
        if script_name and (path == script_name or path.startswith(script_name + "/")):
            path = path[len(script_name):]
        body = request.body
        target = request.target
        env = self.base.copy()  # already holds every key set below: copying beats growing a new dict
        env["REQUEST_METHOD"] = request.method
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = request.query
        env["SERVER_PROTOCOL"] = request.version
        env["REQUEST_URI"] = env["RAW_URI"] = target
        if body:
            env["wsgi.input"] = io.BytesIO(body)
            size = len(body)
        elif (file := request.body_file) is not None:
            env["wsgi.input"] = file  # a body larger than the parser keeps in memory (protocol/body.py)
            size = os.fstat(file.fileno()).st_size
        else:
            env["wsgi.input"] = EMPTY_INPUT
            size = 0
        env["REMOTE_ADDR"] = peer.address
        env["REMOTE_PORT"] = peer.port
        tls = peer.tls
        if tls is not None:  # https, and what the handshake established (server/transport/tls.py)
            env["wsgi.url_scheme"] = "https"
            env.update(tls.variables)
        if size or request.chunked or request.method in _BODY_METHODS:
            env["CONTENT_LENGTH"] = str(size)
        keys = self._keys
        for name, value in request.headers:
            try:
                key = keys[name]  # a subscript is cheaper than .get(): no method call
            except KeyError:
                key = self._key(name)
            if not key:
                continue
            if key in env:  # a repeated field: one value, comma-separated (RFC 9110 5.3)
                env[key] = env[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                env[key] = value
        if request.host is not None:
            env["HTTP_HOST"] = request.host
        proxies = self.proxies
        if proxies.configured and ("HTTP_X_FORWARDED_FOR" in env or "HTTP_X_FORWARDED_PROTO" in env):
            # The client's address and scheme, from a proxy we trust (proxy.py: what it may tell us).
            # Here rather than in a method: behind nginx this runs for every request, and the call
            # cost about 450 instructions of a proxied GET's 96,000 (the ids row of loadtest.instructions).
            address = peer.address
            if address in proxies.single_v4 or proxies.trusts(address):  # the set: the usual entry, no call
                forwarded_for = env.get("HTTP_X_FORWARDED_FOR")
                if forwarded_for is not None:
                    env["REMOTE_ADDR"] = proxies.client_of_trusted(address, forwarded_for)
                proto = env.get("HTTP_X_FORWARDED_PROTO")
                if proto:
                    proto = proto.rsplit(",", 1)[-1].strip().lower()  # the last one was set by the proxy nearest us
                    if proto in ("http", "https"):
                        env["wsgi.url_scheme"] = proto
        return env

    def _key(self, name: str) -> str:
        """The environ key of a header name not in the table yet, added while the table has room."""
        key = _environ_key(name)
        with self._keys_lock:
            if len(self._keys) < _KEYS_LIMIT:
                self._keys[name] = key
        return key


class EmptyInput(io.RawIOBase):
    """``wsgi.input`` of a request without a body: reads end at once, and there is nothing to change.

    One shared object instead of a new BytesIO per request (most requests have no body). It
    keeps no position, so one application cannot disturb another's: seek and tell answer 0, and
    it never closes (close() is a no-op, so ``closed`` stays False).
    """

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return 0

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readall(self) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def close(self) -> None:
        pass

    def __iter__(self) -> EmptyInput:
        return self

    def __next__(self) -> bytes:
        raise StopIteration


EMPTY_INPUT = EmptyInput()
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_KEYS_LIMIT = 512


def _environ_key(name: str) -> str:
    if name in ("content-length", "transfer-encoding") or "_" in name:
        # The body is handed over decoded, with its real length; a name with "_" could
        # pose as a different header once mapped to HTTP_* (as gunicorn and nginx, drop it).
        return ""
    return "HTTP_" + name.upper().replace("-", "_")

"""Build the PEP 3333 environ for one request."""

from __future__ import annotations

import io
import sys
from typing import Any
from urllib.parse import unquote_to_bytes

from ..protocol import Request
from .proxy import TrustedProxies


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
        }

    def build(self, request: Request, peer: tuple[str, int]) -> dict[str, Any]:
        env = self.base.copy()
        path = request.path
        if "%" in path:
            path = unquote_to_bytes(path).decode("latin-1")
        if self.script_name and (path == self.script_name or path.startswith(self.script_name + "/")):
            path = path[len(self.script_name):]
        body = request.body
        env["REQUEST_METHOD"] = request.method
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = request.query
        env["SERVER_PROTOCOL"] = request.version
        env["REQUEST_URI"] = request.target
        env["RAW_URI"] = request.target
        env["wsgi.input"] = io.BytesIO(body)
        env["wsgi.input_terminated"] = True
        if body or request.chunked or request.method in ("POST", "PUT", "PATCH"):
            env["CONTENT_LENGTH"] = str(len(body))
        forwarded_for = forwarded_proto = None
        for name, value in request.headers:
            if name == "content-type":
                env["CONTENT_TYPE"] = value
                continue
            if name in ("content-length", "transfer-encoding") or "_" in name:
                # The body is handed over decoded, with its real length; a name with "_" could
                # pose as a different header once mapped to HTTP_* (as gunicorn and nginx, drop it).
                continue
            if name == "x-forwarded-for":
                forwarded_for = value if forwarded_for is None else f"{forwarded_for}, {value}"
            elif name == "x-forwarded-proto":
                forwarded_proto = value
            key = "HTTP_" + name.upper().replace("-", "_")
            if key in env:
                env[key] = env[key] + ("; " if key == "HTTP_COOKIE" else ",") + value
            else:
                env[key] = value
        if request.host is not None:
            env["HTTP_HOST"] = request.host
        scheme = request.scheme or "http"
        remote = peer[0]
        if (forwarded_for is not None or forwarded_proto is not None) and self.proxies.trusts(peer[0]):
            remote = self.proxies.client(peer[0], forwarded_for)
            if forwarded_proto and forwarded_proto.strip().lower() in ("http", "https"):
                scheme = forwarded_proto.strip().lower()
        env["wsgi.url_scheme"] = scheme
        env["REMOTE_ADDR"] = remote
        env["REMOTE_PORT"] = str(peer[1])
        return env

"""The application every server hosts for the framework and large-answer workloads.

``app`` sends ``GET /big`` to a plain WSGI callable that answers 1 MiB (one bytes object, with its
Content-Length, the way a file or a rendered report leaves an application) and everything else to
an ordinary Flask application. The one ``if`` in front costs the same on every server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

BIG_SIZE = 1 << 20
BIG_BODY = bytes(range(256)) * (BIG_SIZE // 256)

flask_app = Flask(__name__)


@flask_app.get("/hello/<name>")
def hello(name: str) -> str:
    return f"Hello, {name}!"


@flask_app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


def big(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(BIG_SIZE))])
    return [BIG_BODY]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/big":
        return big(environ, start_response)
    return flask_app(environ, start_response)

"""Small WSGI applications the tests serve with ``--app apps:NAME`` (tests/ is on PYTHONPATH)."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from wsgiref.validate import validator


def echo(environ, start_response):
    """Reports what the server put in the environ, and the body it received."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    info = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "script_name": environ["SCRIPT_NAME"],
        "query": environ["QUERY_STRING"],
        "protocol": environ["SERVER_PROTOCOL"],
        "remote_addr": environ["REMOTE_ADDR"],
        "remote_port": environ.get("REMOTE_PORT"),
        "server_name": environ["SERVER_NAME"],
        "server_port": environ["SERVER_PORT"],
        "scheme": environ["wsgi.url_scheme"],
        "content_length": environ.get("CONTENT_LENGTH"),
        "content_type": environ.get("CONTENT_TYPE"),
        "host": environ.get("HTTP_HOST"),
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        "tls": {k: v for k, v in environ.items() if k.startswith("SSL_") or k == "HTTPS"},
        "body": body.decode("latin-1"),
        "pid": os.getpid(),
    }
    data = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def listen_env(environ, start_response):
    """The socket-activation variables as the serving process sees them (they must be gone once used)."""
    names = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    data = json.dumps({name: os.environ.get(name) for name in names} | {"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def streaming(environ, start_response):
    """No Content-Length and a generator body: the server must chunk it (HTTP/1.1)."""
    start_response("200 OK", [("Content-Type", "text/plain")])

    def parts():
        for i in range(5):
            yield f"part{i};".encode()
        yield b""  # empty items must not end a chunked body early

    return parts()


def legacy_write(environ, start_response):
    """The pre-iterator write() callable, mixed with an iterable."""
    write = start_response("200 OK", [("Content-Type", "text/plain")])
    write(b"written;")
    return [b"returned"]


class _ClosingBody:
    closed_log = "/tmp/calc-server-closed.log"

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self):
        return iter(self.chunks)

    def close(self) -> None:
        with open(os.environ.get("CLOSE_LOG", self.closed_log), "a") as fh:
            fh.write("closed\n")


def closing(environ, start_response):
    """An iterable with close(): the server must call it (PEP 3333)."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return _ClosingBody([b"ab", b"cde"])


def crash(environ, start_response):
    """Raises before start_response: the client gets a 500, the log gets the traceback."""
    raise RuntimeError("boom: deliberate failure in the test app")


def crash_after_start(environ, start_response):
    """Uses exc_info the way frameworks do to replace the response before anything is sent."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    try:
        raise ValueError("late failure")
    except ValueError:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
    return [b"replaced"]


def short_body(environ, start_response):
    """Declares more bytes than it sends: the server must not keep the connection."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "100")])
    return iter([b"only ten b"])


def slow(environ, start_response):
    """Sleeps for ?seconds (default 1): stands in for a slow database call."""
    seconds = float(environ.get("QUERY_STRING", "").partition("=")[2] or 1)
    time.sleep(seconds)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
    return [b"done"]


def big(environ, start_response):
    """A large body (?bytes, default 8 MiB), to fill socket buffers of clients that do not read."""
    size = int(environ.get("QUERY_STRING", "").partition("=")[2] or 8 << 20)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    return [b"x" * size]


def threads(environ, start_response):
    """How many threads the process runs right now."""
    data = str(threading.active_count()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]



def paced(environ, start_response):
    """Answers with its own path after sleeping ?sleep=SECONDS (default 0): pipelining order made visible.

    With ?stream=1 it streams instead: "<path>:begun;" at once, then the path after the sleep,
    so a client can see that the call has begun and is now holding its thread.
    """
    query = dict(part.partition("=")[::2] for part in environ.get("QUERY_STRING", "").split("&") if part)
    pause = float(query.get("sleep") or 0)
    data = environ["PATH_INFO"].encode("latin-1")
    if query.get("stream"):
        start_response("200 OK", [("Content-Type", "text/plain")])

        def pieces():
            yield data + b":begun;"
            time.sleep(pause)
            yield data

        return pieces()
    time.sleep(pause)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]

_closed_files: list[str] = []


def files(environ, start_response):
    """Serves the file named by $SERVED_FILE through environ["wsgi.file_wrapper"].

    /file: the whole file (the server finds its size); ?offset=N seeks first; ?length=N declares that
    Content-Length; /memory sends the same bytes from a BytesIO (no descriptor: iterated); /closed
    counts the files whose close() the server called; anything else is a small list body.
    """
    import io

    query = dict(part.partition("=")[::2] for part in environ.get("QUERY_STRING", "").split("&") if part)
    path = environ["PATH_INFO"]
    if path in ("/file", "/memory"):
        name = os.environ["SERVED_FILE"]
        if path == "/file":
            handle = open(name, "rb")  # noqa: SIM115 - the server closes it, as PEP 3333 says
        else:
            with open(name, "rb") as source:
                handle = io.BytesIO(source.read())
        handle.seek(int(query.get("offset") or 0))
        original_close = handle.close

        def close():
            _closed_files.append(path)
            original_close()

        handle.close = close
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in query:
            headers.append(("Content-Length", query["length"]))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](handle, int(query.get("block") or 8192))
    data = (str(len(_closed_files)) if path == "/closed" else path).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]


_batches = {"flushes": 0, "shared": 0}
_batches_lock = threading.Lock()


def _count_batches() -> None:
    """Wrap the reactor's batch flush, in the server process that imports this module, to count batches.

    A batch is "shared" when answers for two or more connections were held when it was written: the
    case batched writes exist for, invisible from any one client. Only this test app pays for the count;
    the server itself keeps no counter on its hot path.
    """
    from server.transport.batch import BatchWriter

    flush = BatchWriter.flush
    if getattr(flush, "counting", False):
        return

    def counted(self):
        _batches["flushes"] += 1
        if sum(len(held) for held in self.queues) >= 2:
            _batches["shared"] += 1
        flush(self)

    counted.counting = True
    BatchWriter.flush = counted


def batch_counting(environ, start_response):
    """``paced``, plus GET /_batches: how many batches of held answers were written, and how many shared.

    The count starts with the first request this app serves (other apps in this module stay uncounted).
    """
    with _batches_lock:
        _count_batches()
    if environ["PATH_INFO"] == "/_batches":
        data = json.dumps(_batches).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]
    return paced(environ, start_response)


validated_echo = validator(echo)
validated_streaming = validator(streaming)
validated_closing = validator(closing)


def input_probe(environ, start_response):
    """Reads ``wsgi.input`` every way PEP 3333 allows and reports what each gave (for bodiless requests)."""
    stream = environ["wsgi.input"]
    info = {
        "read": stream.read().decode("latin-1"),
        "read_n": stream.read(10).decode("latin-1"),
        "readline": stream.readline().decode("latin-1"),
        "readlines": [line.decode("latin-1") for line in stream.readlines()],
        "iter": [line.decode("latin-1") for line in stream],
        "tell": stream.tell(),
        "remote_port": environ["REMOTE_PORT"],
    }
    data = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def body_probe(environ, start_response):
    """Reads the whole ``wsgi.input`` the way QUERY_STRING names, then once more past its end.

    Ways: read (one read()), read_n (read(7) until empty), readline, readline_n (readline(5)),
    readlines, readlines_hint (readlines(100) until empty), iter. Reports the body's length and
    SHA-256, CONTENT_LENGTH, how many pieces the reads gave and what reading past the end gave.
    """
    import hashlib

    stream = environ["wsgi.input"]
    way = environ["QUERY_STRING"]
    if way == "read":
        pieces = [stream.read()]
    elif way == "read_n":
        pieces = list(iter(lambda: stream.read(7), b""))
    elif way == "readline":
        pieces = list(iter(stream.readline, b""))
    elif way == "readline_n":
        pieces = list(iter(lambda: stream.readline(5), b""))
    elif way == "readlines":
        pieces = stream.readlines()
    elif way == "readlines_hint":
        pieces = []
        while batch := stream.readlines(100):
            pieces.extend(batch)
    else:
        pieces = list(stream)
    body = b"".join(pieces)
    info = {"length": len(body), "sha256": hashlib.sha256(body).hexdigest(),
            "content_length": environ.get("CONTENT_LENGTH"), "pieces": len(pieces),
            "after": [len(stream.read()), len(stream.read(10)), len(stream.readline())]}
    data = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]

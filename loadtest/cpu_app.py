"""A CPU-bound WSGI application for the thread-scaling benchmark (loadtest/thread_scaling.py).

Each request runs a pure-Python loop of ``STEPS`` steps (about 3 ms on this machine's 3.11) and
answers with its result: all of the time goes to the interpreter, none to I/O, so it shows how far
one process's threads scale with and without the GIL.
"""

from __future__ import annotations

STEPS = 60_000


def app(environ, start_response):
    total = 0
    for i in range(STEPS):
        total += i * i % 7
    body = b"%d\n" % total
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

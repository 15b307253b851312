"""A WSGI application that reports the interpreter it runs on, from inside the request.

Served by tests/test_free_threading.py with ``--app interpreter_app:app`` (tests/ is on PYTHONPATH).
"""

from __future__ import annotations

import json
import sys
import sysconfig
import threading


def app(environ, start_response):
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)  # 3.13 and later
    info = {
        "version": sys.version,
        "gil_enabled": True if is_gil_enabled is None else is_gil_enabled(),
        "free_threaded_build": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "thread": threading.current_thread().name,
        "main_thread": threading.current_thread() is threading.main_thread(),
    }
    data = json.dumps(info).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]

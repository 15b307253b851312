"""Hosting WSGI (PEP 3333) applications: environ in, status/headers/body out.

This layer knows HTTP requests and WSGI, but not sockets: it writes through a
``send`` callable the transport gives it.
"""

from .loader import load_app
from .runner import WSGIRunner

__all__ = ["WSGIRunner", "load_app"]

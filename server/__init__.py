"""calc-server: an HTTP/1.1 WSGI server from raw sockets, and the calculator it serves by default."""

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

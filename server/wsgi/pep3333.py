"""The callables of PEP 3333 as types: what an application is and what it is handed.

The environ is ``dict[str, Any]`` because PEP 3333 makes it so: CGI strings sit next to
``wsgi.input`` (a stream), ``wsgi.errors``, ``wsgi.file_wrapper`` and whatever keys servers and
middleware add, and an application may read any of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Protocol

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Write = Callable[[bytes], object]


class StartResponse(Protocol):
    """``start_response(status, headers, exc_info=None)``: returns the legacy ``write`` callable."""

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /) -> Write: ...


WSGIApplication = Callable[[Environ, StartResponse], Iterable[bytes]]

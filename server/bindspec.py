"""The forms a listen address takes on the command line (gunicorn's): text in, a typed address out.

Pure string work, no sockets, so ``config`` can check every ``--bind`` before
anything is opened and the transport layer gets addresses it need not re-parse.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

FORMS = "HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"


@dataclass(frozen=True, slots=True)
class BindSpec:
    """One address to listen on: ``kind`` says which of the other fields matter."""

    kind: Literal["tcp", "unix", "fd"]
    text: str  # as the user wrote it, for error messages
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1


def parse_bind(text: str) -> BindSpec:
    """Raises ValueError naming the accepted forms when ``text`` is none of them."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if path.startswith("//"):
            path = path[2:]  # unix://PATH, as some tools write it
        if not path:
            raise ValueError("unix: needs a socket path, e.g. unix:/run/calc.sock")
        if "\0" in path:
            raise ValueError("a socket path cannot contain NUL")
        return BindSpec("unix", text, path=path)
    if text.startswith("fd://"):
        number = text[5:]
        if not number.isdigit():
            raise ValueError("fd:// needs a descriptor number, e.g. fd://3")
        return BindSpec("fd", text, fd=int(number))
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected {FORMS}")
    port = int(port_text)
    if port > 65535:
        raise ValueError("port must be 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError("an IPv6 address goes in brackets, e.g. [::1]:8000")
    return BindSpec("tcp", text, host=host, port=port)

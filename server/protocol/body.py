"""Where a request body waits while it arrives: memory up to a bound, then an anonymous file.

Why
---
The application is called once the whole body is here, so a client that uploads slowly holds a
poller registration and a deadline, never a thread (the transport gathers the body between polls).
The price of that is holding the body somewhere. Kept whole in memory, 200 connections each
trickling a 1 MiB body grew the process by 200 MB, which the allocator did not give back. So a
``BodyBuffer`` keeps at most ``in_memory`` bytes in memory and moves the body to a file once it
grows past that, as waitress does: the memory a connection holds is bounded whatever its body.

The file comes from a factory the server injects (``tempfile.TemporaryFile``: unlinked at once, so
nothing is left behind when the process dies); the protocol core itself opens no files, and with no
factory (the default) bodies stay in memory, bounded only by ``Limits.max_body_size``.

Ownership: one buffer belongs to one parser, touched only by the thread that owns the parser's
connection. When the body is complete, ``finish`` hands the contents to the ``Request``; from then
on the request's ``body_file`` belongs to whoever handles the request (the WSGI runner closes it
once the answer is out). ``discard`` closes a half-received body's file (the connection ended).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

SpillFactory = Callable[[], IO[bytes]]  # opens an empty, readable and writable, anonymous binary file


class BodyBuffer:
    """The body of one request as it arrives: ``in_memory`` bytes in a bytearray, the rest in a file."""

    __slots__ = ("_file", "_in_memory", "_memory", "_spill", "size")

    def __init__(self, in_memory: int, spill: SpillFactory | None) -> None:
        self._in_memory = in_memory
        self._spill = spill
        self._memory = bytearray()
        self._file: IO[bytes] | None = None
        self.size = 0  # bytes written so far, in memory and file together

    def write(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)
            return
        self._memory += data
        if len(self._memory) > self._in_memory and self._spill is not None:
            self._file = self._spill()
            self._file.write(self._memory)
            self._memory = bytearray()  # a new, empty one: clear() would keep the old allocation

    def finish(self) -> tuple[bytes, IO[bytes] | None]:
        """The body as (bytes, None) when it stayed in memory, else (b"", its file at position 0).

        The buffer is empty afterwards and can take the next body.
        """
        file = self._file
        if file is None:
            body = bytes(self._memory)
            self._memory = bytearray()
            self.size = 0
            return body, None
        file.flush()
        file.seek(0)
        self._file = None
        self.size = 0
        return b"", file

    def discard(self) -> None:
        """Drop a body that will never be complete: its memory, and its file if it had one."""
        self._memory = bytearray()
        self.size = 0
        if self._file is not None:
            self._file.close()
            self._file = None

"""``wsgi.file_wrapper`` (PEP 3333's optional extension): let the server send a file the fast way.

An application (Flask's ``send_file``, Django's ``FileResponse``) hands us an
open file wrapped in ``FileWrapper``. When the runner recognises one whose file
is a regular file with a descriptor, and the connection says it can, the kernel
copies the bytes from the page cache to the socket with ``sendfile(2)``: no
read into Python, no copy through a bytes object, one system call per socket
buffer rather than two per block. Anything else (a ``BytesIO``, a pipe, a
TLS connection, which has to encrypt in user space) is read block by block like
any other response body, so the wrapper always works; it is only faster where
it can be.

What is sent is decided by the response's own headers: exactly
``Content-Length`` bytes when the application declared it (even if the file is
longer, as a byte range needs), else the file from its current position to its
end, whose size then becomes the ``Content-Length``.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from typing import Any


class FileWrapper:
    """The iterable PEP 3333 asks for, plus ``region()`` so the server can skip iterating it."""

    __slots__ = ("block_size", "close", "filelike")

    # Any: PEP 3333 asks only for read(); close, fileno and tell are probed for and may be missing
    # (AttributeError is caught), so no one protocol describes what applications hand in.
    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size if block_size > 0 else 8192
        close = getattr(filelike, "close", None)
        if close is not None:
            # PEP 3333: the wrapper's close() closes the file. Django hands over a file whose close
            # was replaced by its response's, so request_finished still fires.
            self.close = close

    def __iter__(self) -> Iterator[bytes]:
        read, size = self.filelike.read, self.block_size
        while True:
            block = read(size)
            if not block:
                return
            yield block

    def region(self) -> tuple[int, int, int | None]:
        """(descriptor, offset, bytes from there to the end) for a regular file; (-1, 0, None) otherwise.

        The offset is the file object's position (``tell``), not the descriptor's: a buffered
        file may have read ahead, and ``sendfile`` is given the offset explicitly anyway.
        """
        filelike = self.filelike
        try:
            fd = filelike.fileno()
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                return -1, 0, None
            offset = filelike.tell()
            return fd, offset, max(0, status.st_size - offset)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            return -1, 0, None

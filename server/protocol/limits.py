"""Size limits the parser enforces; plain data so the core stays free of settings code."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_request_line: int = 8190
    max_header_count: int = 100
    max_header_size: int = 8190
    max_headers_total: int = 65536
    max_body_size: int = 1048576
    max_body_in_memory: int = 65536  # more than this waits in a file, when the parser is given one (body.py)
    max_chunk_ext: int = 1024
    max_leading_empty_lines: int = 4

"""Every cache the request parser keeps, behind one object a server owns: ``HeaderCache``.

Why
---
Clients repeat themselves. A keep-alive client sends the same header block on every request; a
proxy sends the same block with a new request id; a script without a session opens a connection
per request and sends the block every connection began with. Reading a block (split into lines,
check each, pick out the framing fields) is most of what parsing a small request costs, and the
facts it yields depend on the block and the limits alone (facts.py), so they can be reused.

``RequestParser(limits, cache=None)`` reads every block in full. Given a ``HeaderCache`` it reads
each block through a ``BlockMemo`` of its own and must give exactly the same requests and errors
(tests/test_header_cache.py holds the two side by side on arbitrary input and splits; every
protocol test and the h11 oracle run both ways). What the cache saves, in callgrind instructions per
request on the serving thread (``python -m loadtest.instructions``, Python 3.11, one worker thread,
the server with this cache against the same server with ``cache=None``):

- keep-alive ``GET /add/2/3``, the same block every time (the connection's last block, compared
  whole): 107,765 -> 78,435, 27% fewer; keep-alive ``POST /calc``: 140,471 -> 95,826, 32% fewer;
- a GET with a new X-Request-ID and X-Forwarded-For each time, as a proxy forwards it (the changed
  lines read alone, then the block's shape, block_shape.py): 169,462 -> 138,238, 18% fewer;
- a new connection per GET (the blocks that began connections, ``first_block``): 174,279 ->
  148,122, 15% fewer.

The per-line and per-name tables the parser kept before (lines seen on the connection, field
names already found to be tokens, Host values already found valid) are gone: they help only a
block that misses every layer above, which none of the rows above does, so callgrind cannot show
them paying.

Ownership and threads
---------------------
One ``HeaderCache`` per server (the reactor makes it), shared by every connection's parser and
so by every worker thread at once. Its two tables map a text (a block, a pattern's source) to an
immutable value (``HeaderFacts``, whose field list nobody changes; a compiled pattern). Readers
take a value with one ``dict.get`` and no lock; writers insert, or empty a full table, under
``_lock``, so the bound holds and a clear never interleaves with an insert. That is safe without
the GIL: CPython's free-threaded build makes each dict operation atomic with a per-object lock
(PEP 703, "Container thread-safety"), so a reader sees a value or nothing, never a torn entry; a
lost race costs one block read again. Nothing here relies on the GIL.

A ``BlockMemo`` belongs to one parser, touched only by the thread that owns its connection.
"""

from __future__ import annotations

import re
import threading
from operator import ne

from .block_shape import SHAPES_PER_CONNECTION, BlockShape, build_shape
from .facts import FRAMING_FIELDS, NO_FIELDS, HeaderFacts, field_facts, read_block, read_line
from .limits import Limits

REMEMBER_BLOCK = 2048  # longest header block kept, by a connection or for the next connections


class HeaderCache:
    """The header blocks that began connections, and compiled block shapes; one per server, all threads."""

    __slots__ = ("_first_blocks", "_lock", "_patterns", "limits")
    FIRST_BLOCKS = 256  # blocks kept; at the bound the table starts over (blocks never seen again cost one insert)
    PATTERNS = 64  # compiled shapes kept, same rule

    def __init__(self, limits: Limits) -> None:
        """``limits``: those of every parser given this cache (the facts of a block depend on them)."""
        self.limits = limits
        self._lock = threading.Lock()  # taken by writers only
        self._first_blocks: dict[str, HeaderFacts] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}

    def first_block(self, block: str) -> HeaderFacts | None:
        return self._first_blocks.get(block)

    def remember_first_block(self, block: str, facts: HeaderFacts) -> None:
        with self._lock:
            if len(self._first_blocks) >= self.FIRST_BLOCKS:
                self._first_blocks.clear()
            self._first_blocks[block] = facts

    def pattern(self, source: str) -> re.Pattern[str]:
        """``re.compile(source)``, once per server for a shape every connection of a proxy shares."""
        pattern = self._patterns.get(source)
        if pattern is None:
            pattern = re.compile(source)
            with self._lock:
                if len(self._patterns) >= self.PATTERNS:
                    self._patterns.clear()  # the shapes still in use come back at once
                self._patterns[source] = pattern
        return pattern


class BlockMemo:
    """One connection's memory of its last header block, read through the server's ``HeaderCache``.

    Owned by one parser; only the thread that owns the parser's connection touches it.
    """

    __slots__ = ("_cache", "_changed", "_last_lines", "_limits", "_max_field", "_shape", "_shapes_left",
                 "last_block", "last_facts")

    def __init__(self, cache: HeaderCache) -> None:
        self._cache = cache
        self._limits = cache.limits
        self._max_field = cache.limits.max_header_size  # a block no longer than this holds no field longer
        # The last block and its facts: the first layer, which the parser reads itself (parser.py,
        # ``_interpret``: a keep-alive GET costs about 450 instructions less without the call). The
        # parser only reads them; "" (no block yet, or the last was longer than REMEMBER_BLOCK) never
        # equals a block, so NO_FIELDS stands for nothing.
        self.last_block = ""
        self.last_facts = NO_FIELDS
        self._last_lines: list[str] = []  # that block's lines, in order, while last_block is set
        # A proxy changes the same lines (its request id) every time: once two blocks running changed
        # the same ones, the block's shape reads the next in one pass (block_shape.py).
        self._changed: tuple[int, ...] = ()  # the lines the last compared block changed
        self._shape: BlockShape | None = None
        self._shapes_left = SHAPES_PER_CONNECTION

    def facts(self, block: str) -> HeaderFacts:
        """The facts of a non-empty header block (its lines, each ending in CRLF), as ``read_block`` gives them.

        The parser has already compared ``block`` with ``last_block`` (and takes ``last_facts`` itself
        when they are equal), so this starts at the next layer. Given the last block anyway, the
        layers below give equal facts.
        """
        shape = self._shape
        if shape is not None and len(block) <= self._max_field and (found := shape.pattern.fullmatch(block)):
            # The lines that vary, in one pass; the memo of the last block stays as it was (a pair
            # that agree), since this block's lines are never split out.
            return shape.facts(found)
        lines = block.split("\r\n")
        lines.pop()  # the block ends with CRLF: nothing after the last one
        facts = None
        first = not self.last_block
        if not first:
            if len(lines) == len(self._last_lines):
                facts = self._by_difference(lines)
        else:
            facts = self._cache.first_block(block)
        if facts is None:
            facts = read_block(block, self._limits)
            if first and len(block) <= REMEMBER_BLOCK:
                self._cache.remember_first_block(block, facts)
        if len(block) <= REMEMBER_BLOCK:
            self.last_block, self.last_facts, self._last_lines = block, facts, lines
        return facts

    def _by_difference(self, lines: list[str]) -> HeaderFacts | None:
        """The last block's facts with only its changed lines read again, or None to read them all.

        Called for a block of as many lines as the last one. A proxy's blocks differ from one request
        to the next in a line or two (its request id, the client's address) at the same places, so
        comparing line by line (a C-level pass, no hashing) finds those few; the unchanged lines were
        checked when they came. A changed line is read as the full reading does (``read_line``); one
        that is not plainly valid gives None, and the whole block is read, which names the problem.
        """
        last = self.last_facts
        changed = list(map(ne, lines, self._last_lines))
        count = changed.count(True)
        headers = last.fields.copy()
        max_field = self._max_field
        framing = False
        i = -1
        at = []
        while count:
            count -= 1
            i = changed.index(True, i + 1)
            at.append(i)
            line = lines[i]
            field = read_line(line) if len(line) <= max_field else None
            if field is None:
                return None
            if field[0] in FRAMING_FIELDS or field[0] != headers[i][0]:
                framing = True  # a framing value, or a name that changed (a singleton may now repeat)
            headers[i] = field
        if framing:
            return field_facts(headers)
        facts = HeaderFacts(headers, last.framing)
        shape = tuple(at)
        if shape == self._changed and self._shapes_left:
            self._shapes_left -= 1
            self._shape = build_shape(lines, shape, facts, self._cache.pattern)
        self._changed = shape
        return facts

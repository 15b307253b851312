"""A memo of the header blocks that began connections, shared by the parsers of one server."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .parser import _FieldFacts


class FirstBlocks:
    """The header blocks that began connections, with their facts, shared by one server's parsers.

    Why: a client that opens a connection per request (a script without a session, a health check,
    HTTP/1.0) sends the same block every time, but each connection's parser starts with an empty
    memo and would check every line again. The facts depend on the block and the limits only, so
    every parser given this memo must have the same ``Limits``. Only a connection's first block is
    looked up and kept: after that the parser's own memo does better. Bounded: at ``LIMIT`` blocks
    it starts over, so blocks that never come again (a proxy's request ids) cost one insertion each.
    Threads share it; single dictionary operations are atomic under the GIL, and a lost insertion
    only means one block is checked again.
    """

    __slots__ = ("_facts",)
    LIMIT = 256

    def __init__(self) -> None:
        self._facts: dict[str, _FieldFacts] = {}

    def get(self, block: str) -> _FieldFacts | None:
        return self._facts.get(block)

    def remember(self, block: str, facts: _FieldFacts) -> None:
        if len(self._facts) >= self.LIMIT:
            self._facts.clear()
        self._facts[block] = facts

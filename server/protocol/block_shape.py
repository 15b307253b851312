"""A connection's header block whose values change in the same places each time, read in one pass.

Why
---
A proxy writes the same fields in the same order on every request it forwards and changes only a
few values: its request id, the client's address. The parser's exact memo of the last block never
hits then, and comparing the block with the last one line by line still costs, per request, a
split into lines, one comparison per line and, for each changed line, the field checks in Python.

Once a connection has changed the same lines in two requests running, its block gets a *shape*: a
pattern in which the lines that stayed are literal text and each changed line is its literal name,
the colon and a group for the value. One ``fullmatch`` then checks the whole block in C and hands
over the new values; the fields that stayed, and what they mean for framing, are taken as they were.

What it must keep
-----------------
A block that matches must give exactly what the full reading would. The literal lines were checked
when they first came. A value group takes what the field rule takes (any octet but a control
character other than HTAB, so obs-text too; no CR or LF), and the value loses its surrounding
spaces and tabs, as the full reading trims it. Names are literal, so a name in other letter case,
a new field, a missing one or a value with a bare CR does not match, and the block is read the
usual way, which names any problem. Framing fields (Host, Content-Length, Transfer-Encoding,
Connection, Expect) are never value groups: a block in which one of them changes is read in full.

The trade-off: building a shape costs a ``re.compile``, so the compiled patterns are shared by all
connections of a server through its ``HeaderCache`` (header_cache.py), keyed by their pattern text
(every connection of one proxy has the same), and a connection builds at most
``SHAPES_PER_CONNECTION`` of them, so a client whose changes wander cannot make the parser compile
on every request. What would break: making a framing field
a value group (the facts taken as they were would be stale), or a value group wider than the
field rule (a control character would get through unchecked).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from .facts import Framing, HeaderFacts
from .grammar import VALUE_CHAR

SHAPES_PER_CONNECTION = 4
# A value as the field rule allows it: leading spaces and tabs outside the group, trailing ones
# inside it (trimmed afterwards; a pattern that excludes them costs more on every match). Both runs
# are possessive, as in the parser's field patterns: no backtracking over a long run of spaces.
_VALUE = r":[ \t]*+(" + VALUE_CHAR + r"*+)\r\n"


class BlockShape:
    """The compiled pattern of one shape, the fields that stay, and where the changing values go."""

    __slots__ = ("fields", "framing", "pattern", "slots")

    def __init__(self, pattern: re.Pattern[str], fields: list[tuple[str, str]], slots: tuple[tuple[int, str], ...],
                 framing: Framing) -> None:
        self.pattern = pattern
        self.fields = fields  # the block's (name, value) pairs; the slots' entries are replaced per request
        self.slots = slots  # (index in fields, lower-case name) of each value group, in order
        self.framing = framing  # what the fields say for framing: the same whatever the values

    def facts(self, found: re.Match[str]) -> HeaderFacts:
        """The block's facts with the values ``found`` by this shape's pattern in place.

        One or two varying lines (a request id, a client address) are the usual shapes and are filled
        in without a loop: a loop over ``zip`` costs about twice as much for so few values.
        """
        headers = self.fields.copy()
        values = found.groups()
        if len(values) == 1:
            index, name = self.slots[0]
            headers[index] = (name, values[0].rstrip(" \t"))
        elif len(values) == 2:
            (first, first_name), (second, second_name) = self.slots
            headers[first] = (first_name, values[0].rstrip(" \t"))
            headers[second] = (second_name, values[1].rstrip(" \t"))
        else:
            for (index, name), value in zip(self.slots, values, strict=True):
                headers[index] = (name, value.rstrip(" \t"))
        return HeaderFacts(headers, self.framing)


def build_shape(lines: list[str], changed: tuple[int, ...], facts: HeaderFacts,
                compile_pattern: Callable[[str], re.Pattern[str]]) -> BlockShape:
    """The shape of a block (its ``lines``, already checked, and their ``facts``) whose ``changed`` lines vary.

    The caller makes sure no changed line is a framing field. ``compile_pattern`` is the server's
    shared ``HeaderCache.pattern``.
    """
    parts = []
    for index, line in enumerate(lines):
        if index in changed:
            parts.append(re.escape(line.partition(":")[0]) + _VALUE)
        else:
            parts.append(re.escape(line) + r"\r\n")
    fields = facts.fields
    slots = tuple((index, fields[index][0]) for index in changed)
    return BlockShape(compile_pattern("".join(parts)), fields.copy(), slots, facts.framing)

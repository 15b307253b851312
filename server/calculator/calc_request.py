"""Decoding and validating the ``POST /calc`` JSON body into (op, arg1, arg2).

``json.loads`` is lenient where a calculator must not be: it accepts NaN and Infinity, lets a
duplicate key silently win, turns numbers into floats (0.1 + 0.2 != 0.3) and hands long integers
to ``int()``. The decoder below replaces each of those behaviours with a hook.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from urllib.parse import quote

from . import arithmetic
from .arithmetic import NonFiniteNumber, OperandError, OutOfRange
from .problems import Problem, shown

FIELDS = ("op", "arg1", "arg2")
MAX_DEPTH = 32  # a calculation is one flat object; deeper nesting is refused before decoding
# Strings are skipped whole (an unterminated one runs to the end, so every match succeeds and the
# scan stays linear); only brackets outside strings are counted.
_STRUCTURE = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\\?\Z)|[\[\]{}]', re.DOTALL)
_TOO_DEEP = (f"The body nests arrays or objects more than {MAX_DEPTH} levels deep; "
             'send one flat object {"op": ..., "arg1": ..., "arg2": ...}.')
EXAMPLE = '{"op": "add", "arg1": 2, "arg2": 3}'
_FIELD_SET = frozenset(FIELDS)
_ALLOWED_OPS = list(arithmetic.OPERATIONS)

# The body nearly every client sends: the three fields in the documented order, op a plain string and
# the operands JSON numbers without exponent. One match on the raw bytes decodes it for a fraction of
# what UTF-8 decoding plus the full decoder (Python-level wrapper, a hook call per member) cost, and
# a whole number comes back as an int (see arithmetic.INTEGER_OPERATIONS). Anything else (another
# key order, escapes, exponents, any error) goes through the full path, which gives the same result
# for a body this pattern matches; so the pattern only decides speed, never the outcome.
# Whitespace is JSON's four characters, exactly what the json module skips, where encoders put it:
# around the object and after colons and commas (each further place costs a little on every match).
# What follows each repetition can never continue it, so the repetitions are possessive (``*+``):
# nothing is kept for backtracking, which is both cheaper and keeps a hostile body linear.
_WS = rb"[ \t\n\r]*+"
_PLAIN_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?"
_OP_NAMES = {name.encode(): name for name in arithmetic.OPERATIONS}
DOT = ord(".")  # bytes membership of an int is a plain scan; of b"." it first fails (and clears) an int conversion
COMMON_BODY = re.compile(
    rb'%(ws)s\{%(ws)s"op":%(ws)s"(%(ops)s)",%(ws)s"arg1":%(ws)s(%(number)s),%(ws)s"arg2":%(ws)s(%(number)s)%(ws)s\}%(ws)s'
    % {b"ws": _WS, b"number": _PLAIN_NUMBER, b"ops": b"|".join(map(re.escape, _OP_NAMES))})


class Rejected:
    """A number the decoder refused, kept until validation knows which field it belongs to."""

    __slots__ = ("error",)

    def __init__(self, error: OperandError) -> None:
        self.error = error


class DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _number(text: str) -> Decimal | Rejected:
    # The decoder gives the number's exact JSON text; it is checked against the bound before any
    # conversion, so 1e999999999 or 16 KiB of digits cost no more than their length.
    try:
        return arithmetic.bounded_decimal(text)
    except OperandError as error:
        return Rejected(error)


def _constant(name: str) -> Rejected:
    return Rejected(NonFiniteNumber(f"is the JSON literal {name}, which RFC 8259 does not allow; "
                                    "only finite numbers are accepted"))


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(key)
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(parse_float=_number, parse_int=_number, parse_constant=_constant,
                            object_pairs_hook=_object)


def parse_calc_request(body: bytes) -> tuple[str, Decimal | int, Decimal | int]:
    """The validated operation name and operands, or a ``Problem`` naming what to fix.

    An operand is an int when the body wrote it as a whole number (the fast path below), otherwise a
    Decimal; either way it has the same value and the same ``to_plain`` text.
    """
    common = COMMON_BODY.fullmatch(body)
    if common is not None:
        parsed = parse_common(common)
        if parsed is not None:
            return parsed
    return parse_other(body)


def parse_common(common: re.Match[bytes]) -> tuple[str, Decimal | int, Decimal | int] | None:
    """The request a match of ``COMMON_BODY`` holds, or None if an operand needs the full checks."""
    # An ASCII body, so also valid UTF-8.
    op, first, second = common.groups()
    # Plain notation in at most 100 characters is within the size bound (see bounded_decimal).
    if len(first) <= arithmetic.MAX_SIGNIFICANT_DIGITS and len(second) <= arithmetic.MAX_SIGNIFICANT_DIGITS:
        return (_OP_NAMES[op], int(first) if DOT not in first else Decimal(first.decode()),
                int(second) if DOT not in second else Decimal(second.decode()))
    return None


def parse_other(body: bytes) -> tuple[str, Decimal, Decimal]:
    """The full path for a body ``COMMON_BODY`` does not match (or whose operands are too long for it)."""
    if not body:
        raise Problem("empty-body", f"The body is empty; send a JSON object such as {EXAMPLE}.")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _not_utf8(error) from None
    return parse_document(text)


def parse_document(text: str) -> tuple[str, Decimal, Decimal]:
    """The full path for any body text: decode with every check, then validate the fields."""
    document = _decode(text)
    if type(document) is not dict:
        raise Problem("not-an-object",
                      f"The body is {_describe(document)}, not a JSON object; send one such as {EXAMPLE}.",
                      pointer="#")
    if len(document) != 3 or document.keys() != _FIELD_SET:
        _check_fields(document)
    op = document["op"]
    if type(op) is not str:
        raise Problem("wrong-type", f"op must be a string naming the operation, one of {_listed()}; "
                      f"got {_describe(op)}.", pointer=_pointer("op"), allowed=_ALLOWED_OPS)
    if op not in arithmetic.OPERATIONS:
        raise Problem("unknown-operation", f"op {_quoted(op)} is not an operation; use one of {_listed()}.",
                      pointer=_pointer("op"), received=shown(op), allowed=_ALLOWED_OPS)
    return op, _operand(document, "arg1"), _operand(document, "arg2")


def _not_utf8(error: UnicodeDecodeError) -> Problem:
    return Problem("invalid-utf8",
                   f"The body is not UTF-8: byte {error.object[error.start]:#04x} at offset {error.start} "
                   f"({error.reason}). Encode the JSON as UTF-8.", position=error.start)


def _decode(text: str) -> object:
    """The full, validating decode: any JSON document, or the problem that explains why not."""
    if _too_deep(text):
        raise Problem("nesting-too-deep", _TOO_DEEP)
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise Problem("malformed-json",
                      f"The body is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno} "
                      f"(character {error.pos}).", line=error.lineno, column=error.colno, position=error.pos) from None
    except DuplicateKey as error:
        raise Problem("duplicate-key",
                      f"The key {_quoted(error.key)} appears more than once in an object; give each field once.",
                      key=shown(error.key)) from None
    except RecursionError:  # only if the interpreter's recursion limit is below MAX_DEPTH
        raise Problem("nesting-too-deep", _TOO_DEEP) from None


def _too_deep(text: str) -> bool:
    """Whether arrays/objects nest deeper than ``MAX_DEPTH``, decided without recursion.

    The C decoder recurses once per level and is only stopped by the interpreter's recursion limit,
    which a host process may have raised far enough to overflow the C stack. A body with few
    brackets (every real request) skips the scan.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return False
    depth = 0
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        elif token in "]}":
            depth -= 1
    return False


def _check_fields(document: dict[str, object]) -> None:
    unknown = [key for key in document if key not in _FIELD_SET]
    missing = [name for name in FIELDS if name not in document]
    if unknown:
        names = ", ".join(_quoted(key) for key in unknown[:10])
        hint = f" ({', '.join(missing)} missing)" if missing else ""
        raise Problem("unknown-field",
                      f"Unknown field{'s' if len(unknown) > 1 else ''} {names}; the object takes exactly "
                      f"op, arg1 and arg2{hint}.",
                      pointer=_pointer(unknown[0]), unknown=[shown(key) for key in unknown[:10]],
                      allowed=list(FIELDS))
    raise Problem("missing-field",
                  f"Missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}; the object takes "
                  f"exactly op, arg1 and arg2, as in {EXAMPLE}.",
                  pointer="#", missing=missing)


def _operand(document: dict[str, object], name: str) -> Decimal:
    value = document[name]
    if type(value) is Decimal:
        return value
    if type(value) is Rejected:
        error = value.error
        slug = "operand-out-of-range" if isinstance(error, OutOfRange) else "non-finite-number"
        raise Problem(slug, f"{name} {error.reason}.", pointer=_pointer(name))
    if type(value) is str:
        try:
            arithmetic.parse_operand(value)
        except OperandError:
            detail = f"{name} must be a JSON number; got the string {_quoted(value)}."
        else:
            detail = f"{name} must be a JSON number, not a string: write {shown(value)} instead of {_quoted(value)}."
        raise Problem("wrong-type", detail, pointer=_pointer(name), received=shown(value))
    raise Problem("wrong-type", f"{name} must be a JSON number; got {_describe(value)}.", pointer=_pointer(name))


def _describe(value: object) -> str:
    """A JSON value named the way the client wrote it."""
    if value is True or value is False:
        return f"the boolean {'true' if value else 'false'}"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {_quoted(value)}"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, Rejected):
        return "a number outside the accepted range" if isinstance(value.error, OutOfRange) else "NaN or Infinity"
    return f"the number {arithmetic.to_plain(value)}" if isinstance(value, Decimal) else "a JSON value"


def _listed() -> str:
    return ", ".join(_ALLOWED_OPS)


def _quoted(text: str) -> str:
    """Client text as a JSON string literal, the way it appeared in the body (shortened if long)."""
    return json.dumps(shown(text))


def _pointer(key: str) -> str:
    """The RFC 6901 JSON pointer to a top-level member, in URI-fragment form as in RFC 9457's examples."""
    token = key.replace("~", "~0").replace("/", "~1")
    # surrogatepass: a key may hold a lone surrogate (from a \ud800 escape), which strict UTF-8 cannot encode.
    return "#/" + quote(token, safe="~!$&'()*+,;=:@", errors="surrogatepass")

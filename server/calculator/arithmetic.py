"""Exact decimal arithmetic: operand parsing, the size bound, the four operations and result formatting.

Pure functions with no HTTP in them; the routes turn the exceptions below into problem documents.

The size bound exists so that every request costs microseconds no matter what a client sends:
an operand has at most ``MAX_SIGNIFICANT_DIGITS`` significant digits and is zero or has a magnitude
in [1e-100, 1e100). Within that bound add, sub and mult are always exact, division is rounded to
``DIVISION_PRECISION`` significant digits, and a result printed in plain notation (no exponent) is
never longer than ``MAX_RESULT_CHARS`` characters.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal, DivisionByZero, InvalidOperation, Overflow

MAX_SIGNIFICANT_DIGITS = 100
MAX_ADJUSTED_EXPONENT = 99  # the leading digit is at most in the 10**99 place: |x| < 1e100
MIN_ADJUSTED_EXPONENT = -100  # the leading digit is at least in the 10**-100 place: |x| >= 1e-100
MAX_OPERAND_CHARS = 400  # room for any bounded value in plain notation, with trailing zeros to spare
DIVISION_PRECISION = 100  # equal to the operand bound, so a quotient that is itself a valid operand is exact
# Widest possible plain result: a product of two 100-digit operands near 1e-100 needs "-0." plus
# 397 zeros and digits (lowest digit in the 10**-398 place); sums and quotients are shorter.
MAX_RESULT_CHARS = 401

# A sum of two bounded operands spans at most the 10**100 .. 10**-199 places (301 digits with the
# carry) and a product has at most 200 significant digits, so 400 digits of precision never round.
# Explicit contexts, not the thread-local one: no lookup per operation and no dependence on what
# else runs in the process. Sharing them across threads is safe: an operation only ORs its flags
# into the context (nothing reads them) and decides whether to trap from its own status.
_EXACT = Context(prec=400, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999,
                 traps=[InvalidOperation, DivisionByZero, Overflow])
_DIVIDE = Context(prec=DIVISION_PRECISION, rounding=ROUND_HALF_EVEN, Emax=999_999, Emin=-999_999,
                  traps=[InvalidOperation, DivisionByZero, Overflow])

# One unambiguous way through the pattern for every input, so a hostile 8 KiB operand is matched in
# linear time (``\d+\.?\d*`` would backtrack quadratically on a long run of digits).
NUMBER_PATTERN = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_NUMBER = re.compile(NUMBER_PATTERN)
_NON_FINITE = frozenset(
    sign + name
    for sign in ("", "+", "-")
    for name in ("nan", "snan", "inf", "infinity")
)
_MAX_EXPONENT_DIGITS = 7  # longer exponents are far outside the bound; reject them before Decimal sees them
ZERO = Decimal(0)


class OperandError(ValueError):
    """An operand the calculator refuses; ``reason`` completes the sentence "the operand ..."."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotANumber(OperandError):
    """The text is not a decimal number at all."""


class NonFiniteNumber(OperandError):
    """NaN or Infinity: valid for floats, meaningless for an exact calculator."""


class OutOfRange(OperandError):
    """A number beyond the documented size bound."""


class DivisionByZeroError(ArithmeticError):
    """The divisor is zero (including 0/0)."""


def parse_operand(text: str) -> Decimal:
    """A path operand: optional sign, ASCII digits, optional fraction and exponent.

    Stricter than ``Decimal()``, which would also take whitespace, underscores, non-ASCII digits,
    NaN and Infinity.
    """
    if ((text.isdigit() or text.replace(".", "", 1).isdigit()) and text.isascii()
            and len(text) <= MAX_SIGNIFICANT_DIGITS):
        # The common cases without the regex: ASCII digits with at most one point ("2", "0.1", "5.",
        # ".5") are number syntax, and at most 100 characters of plain notation are within the bound.
        return Decimal(text)
    if _NUMBER.fullmatch(text) is not None:
        return bounded_decimal(text)
    if text.lower() in _NON_FINITE:
        raise NonFiniteNumber("is not a finite number (NaN and Infinity are not accepted)")
    raise NotANumber("is empty" if not text else "is not a decimal number")


def bounded_decimal(text: str) -> Decimal:
    """The Decimal for text that is already known to be number syntax, checked against the bound."""
    if len(text) <= MAX_SIGNIFICANT_DIGITS and "e" not in text and "E" not in text:
        # Fast path: at most 100 characters of plain notation cannot hold more than 100 digits,
        # nor put the leading digit above the 10**99 or below the 10**-99 place.
        return Decimal(text)
    return _checked_decimal(text)


def _checked_decimal(text: str) -> Decimal:
    if len(text) > MAX_OPERAND_CHARS:
        raise OutOfRange(f"is {len(text)} characters long; at most {MAX_OPERAND_CHARS} are accepted")
    exponent = text.lower().partition("e")[2]
    if len(exponent.lstrip("+-").lstrip("0")) > _MAX_EXPONENT_DIGITS:
        raise OutOfRange(f"has the exponent {_abbreviate(exponent)}, far outside the accepted range "
                         f"1e{MIN_ADJUSTED_EXPONENT} <= |x| < 1e{MAX_ADJUSTED_EXPONENT + 1}")
    value = Decimal(text)
    if not value:
        return ZERO
    digits = value.as_tuple().digits
    significant = len(bytes(digits).rstrip(b"\0"))  # trailing zeros of the coefficient are not significant
    if significant > MAX_SIGNIFICANT_DIGITS:
        raise OutOfRange(f"has {significant} significant digits; at most {MAX_SIGNIFICANT_DIGITS} are accepted")
    adjusted = value.adjusted()
    if not MIN_ADJUSTED_EXPONENT <= adjusted <= MAX_ADJUSTED_EXPONENT:
        size = "large" if adjusted > 0 else "small"
        raise OutOfRange(f"is too {size} (about 1e{adjusted}); accepted magnitudes are "
                         f"1e{MIN_ADJUSTED_EXPONENT} <= |x| < 1e{MAX_ADJUSTED_EXPONENT + 1}, or 0")
    return value


def _abbreviate(text: str, keep: int = 12) -> str:
    return text if len(text) <= keep else f"{text[:keep]}… ({len(text)} characters)"


def divide(dividend: Decimal | int, divisor: Decimal | int) -> Decimal:
    """Quotient rounded to ``DIVISION_PRECISION`` significant digits, half to even."""
    if not divisor:
        raise DivisionByZeroError("division by zero")
    return _DIVIDE.divide(dividend, divisor)


# The operations by their URL/JSON names; add, sub and mult use a precision at which they are exact.
# They take ints as well as Decimals (converted exactly).
OPERATIONS: dict[str, Callable[[Decimal | int, Decimal | int], Decimal]] = {
    "add": _EXACT.add,
    "sub": _EXACT.subtract,
    "mult": _EXACT.multiply,
    "div": divide,
}

# The same operations for two whole numbers, the usual operands. Python ints are exact like the
# Decimal operations above and str() of the result is the text to_plain gives for the Decimal one,
# at a fraction of the cost of making, combining and printing Decimals. Division has no int form:
# its quotient is rarely whole.
INTEGER_OPERATIONS: dict[str, Callable[[int, int], int]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mult": operator.mul,
}


def to_plain(value: Decimal | int) -> str:
    """Plain notation without exponent or trailing zeros: ``4``, ``0.25``, ``-1000``; zero is ``0``.

    The output is valid JSON number text as well as the text/plain body.
    """
    if not value:
        return "0"  # also covers -0 and 0E+5
    text = str(value)
    if "E" in text and isinstance(value, Decimal):  # an int's str() never has an exponent
        # str() switches to scientific notation for positive exponents and tiny numbers; the
        # normalized value has no trailing zeros, and format "f" writes it out in full.
        return format(value.normalize(_EXACT), "f")
    if "." in text:
        return text.rstrip("0").rstrip(".")
    return text

"""The OpenAPI 3.1 description of the calculator, built once at import.

Limits, precision and the problem catalogue are read from the modules that enforce them, so the
document states what the code does rather than what someone remembered to write down.
"""

from __future__ import annotations

import json
from typing import Any

from . import arithmetic
from .problems import DOCUMENTED, PROBLEM_JSON, SERVER_CATALOGUE
from .request_body import MAX_BODY_BYTES

VERSION = "1.0.0"
_A = arithmetic

_DESCRIPTION = f"""\
An exact decimal calculator.

**Numbers.** Operands are decimal numbers: in a path an optional sign, ASCII digits, an optional
fraction and exponent (`2`, `-1.5`, `.5`, `6.02e23`); in JSON ordinary JSON numbers. NaN and
Infinity are rejected, and so are booleans, null and numeric strings in JSON.

**Size bound.** An operand has at most {_A.MAX_SIGNIFICANT_DIGITS} significant digits, is 0 or has a
magnitude in [1e{_A.MIN_ADJUSTED_EXPONENT}, 1e{_A.MAX_ADJUSTED_EXPONENT + 1}), and is written in at
most {_A.MAX_OPERAND_CHARS} characters; anything else is a 422 `operand-out-of-range` problem, decided
from the text before any conversion. The bound makes every request cheap and keeps results short.

**Exactness.** add, sub and mult are always exact (0.1 + 0.2 is 0.3). div rounds the quotient to
{_A.DIVISION_PRECISION} significant digits, half to even; a quotient that fits in
{_A.DIVISION_PRECISION} digits (every quotient that is itself a valid operand) is exact.

**Results** are written in plain notation, never with an exponent or trailing zeros: `4`, `0.25`,
`-1000`, `0.000001`. Integral results have no fraction. Within the size bound a result is at most
{_A.MAX_RESULT_CHARS} characters long (1e-90 * 1e-90 is `0.` followed by 179 zeros and a 1).

**Errors** are RFC 9457 problem documents (`application/problem+json`) with `type`, `title`,
`status`, `detail` and `instance`, plus members such as `pointer` (JSON body), `parameter` (path)
and `received`. Each `type` is a stable URI `/problems/{{slug}}`; GET it for a description.

**Answers from the server itself.** Before any operation runs, the HTTP server may refuse a request it
cannot read or will not take: 400 (malformed HTTP), 408 (too slow), 413 (body over the server limit),
414 (request line too long), 417 (unknown expectation), 431 (header block too large), 501 (CONNECT or
an unknown transfer coding), 503 (connection limit) and 505 (HTTP version). Every operation lists
them; they are problem documents too, with their own types, and the connection is closed after them.

**Operands in the schema.** Path and JSON operands alike are declared as numbers with the
magnitude bound (0, or 1e-100 <= |x| < 1e100) and, for div, a divisor that is not 0, so a request
the schema allows is one the server answers. What JSON Schema cannot state for a number is the digit
count: an operand with more than {_A.MAX_SIGNIFICANT_DIGITS} significant digits, such as a 101-digit
fraction, is inside the range and still answered 422 `operand-out-of-range`. A number printed from an
integer in the range or from a double never has that many.
"""


def _problem_type_list() -> str:
    rows = [f"| `{kind.uri}` | {kind.status} | {kind.title} |" for kind in DOCUMENTED.values()]
    return "\n".join(["| type | status | title |", "| --- | --- | --- |", *rows])


def _problem_responses(*slugs: str) -> dict[str, Any]:
    """Responses grouped by status, each listing the problem types it can carry as examples."""
    grouped: dict[str, dict[str, Any]] = {}
    for slug in slugs:
        kind = DOCUMENTED[slug]
        entry = grouped.setdefault(str(kind.status), {
            "description": "",
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}, "examples": {}}},
        })
        entry["description"] = "; ".join(filter(None, [entry["description"], kind.title]))
        entry["content"][PROBLEM_JSON]["examples"][slug] = {
            "summary": kind.title,
            "description": kind.description,
            "value": {"type": kind.uri, "title": kind.title, "status": kind.status, "detail": kind.description},
        }
    if "405" in grouped:
        grouped["405"]["headers"] = {"Allow": {"description": "The methods the resource supports.",
                                               "schema": {"type": "string"}}}
    return grouped


# Every operation can get these from the server before it runs (see "Answers from the server itself").
_SERVER_SLUGS = tuple(SERVER_CATALOGUE)

def _health_unavailable(responses: dict[str, Any]) -> dict[str, Any]:
    """/healthz's 503 may also be the server draining before it shuts down (--drain-delay)."""
    unavailable = responses["503"]
    unavailable["description"] += "; or the server is draining before it shuts down (--drain-delay)"
    unavailable["content"]["application/json"] = {
        "schema": {"type": "object", "properties": {"status": {"const": "draining"}}, "required": ["status"]},
        "example": {"status": "draining"},
    }
    unavailable["headers"] = {"Retry-After": {"description": "Seconds to wait before asking again.",
                                              "schema": {"type": "string"}}}
    return responses


def _operand_parameter(name: str, divisor: bool = False) -> dict[str, Any]:
    schema = _operand_schema("")
    del schema["description"]
    description = ("A decimal number within the size bound, such as `2`, `-1.5` or `6.02e23`, written as "
                   "the Numbers section says (optional sign, digits, optional fraction and exponent).")
    if divisor:
        schema["not"] = {"const": 0}
        description += " Not zero: it is the divisor."
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
        "example": 2 if name == "arg1" else 3,
    }


def _operation_path(op: str, summary: str, example: tuple[str, str, str]) -> dict[str, Any]:
    slugs = ["invalid-number", "non-finite-number", "operand-count", "method-not-allowed", "operand-out-of-range"]
    divisor = "#/components/parameters/arg2"
    if op == "div":
        slugs.append("division-by-zero")  # for a zero the schema lets through only in negative testing
        divisor = "#/components/parameters/divisor"
    a, b, result = example
    return {
        "get": {
            "operationId": op,
            "summary": summary,
            "description": f"GET /{op}/{a}/{b} answers `{result}`. HEAD is answered too, with the same headers.",
            "parameters": [{"$ref": "#/components/parameters/arg1"}, {"$ref": divisor}],
            "responses": {
                "200": {
                    "description": "The exact result (rounded only for div), in plain notation.",
                    "headers": {"Content-Length": {"schema": {"type": "integer"}}},
                    "content": {"text/plain; charset=utf-8": {"schema": {"type": "string"}, "example": result}},
                },
                **_problem_responses(*slugs, *_SERVER_SLUGS),
            },
        },
    }


def _operand_schema(description: str) -> dict[str, Any]:
    """An operand (JSON or path) with the size bound JSON Schema can state: 0 or 1e-100 <= |x| < 1e100.

    The digit and length bounds need no words here: a JSON number inside that range that a generator
    writes (an integer, or a double) has far fewer than 100 significant digits and 400 characters.
    """
    low, high = 10.0 ** _A.MIN_ADJUSTED_EXPONENT, 10.0 ** (_A.MAX_ADJUSTED_EXPONENT + 1)
    return {
        "type": "number", "description": description, "exclusiveMinimum": -high, "exclusiveMaximum": high,
        "anyOf": [{"const": 0}, {"minimum": low}, {"maximum": -low}],
    }


def _number_schema(description: str) -> dict[str, Any]:
    return {"type": "number", "description": description}


def document() -> dict[str, Any]:
    """The OpenAPI document as a dict."""
    calc_problems = [
        "unsupported-media-type", "body-too-large", "invalid-content-length", "empty-body", "invalid-utf8",
        "malformed-json", "nesting-too-deep", "not-an-object", "duplicate-key", "missing-field", "unknown-field",
        "unknown-operation", "wrong-type", "non-finite-number", "method-not-allowed", "operand-out-of-range",
        "division-by-zero",
    ]
    paths: dict[str, Any] = {
        "/add/{arg1}/{arg2}": _operation_path("add", "arg1 + arg2", ("2", "3", "5")),
        "/sub/{arg1}/{arg2}": _operation_path("sub", "arg1 - arg2", ("0.3", "0.1", "0.2")),
        "/mult/{arg1}/{arg2}": _operation_path("mult", "arg1 * arg2", ("2.5", "4", "10")),
        "/div/{arg1}/{arg2}": _operation_path("div", "arg1 / arg2, rounded", ("1", "4", "0.25")),
        "/calc": {
            "post": {
                "operationId": "calc",
                "summary": "Calculate from a JSON request",
                "description": f"The body is one JSON object with exactly `op`, `arg1` and `arg2`, at most "
                               f"{MAX_BODY_BYTES} bytes, UTF-8. Duplicate keys, NaN/Infinity literals and "
                               "numeric strings are rejected.",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/CalcRequest"},
                            "example": {"op": "mult", "arg1": 2, "arg2": 4},
                        },
                    },
                },
                "responses": {
                    "200": {
                        "description": "The result with the request echoed; numbers are exact JSON number text.",
                        "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/CalcResult"},
                            "example": {"op": "mult", "arg1": 2, "arg2": 4, "result": 8},
                        }},
                    },
                    **_problem_responses(*calc_problems, *_SERVER_SLUGS),
                },
            },
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness check for containers and load balancers",
                "responses": {
                    "200": {"description": "The service is up.", "content": {"application/json": {
                        "schema": {"type": "object", "properties": {"status": {"const": "ok"}},
                                   "required": ["status"]},
                        "example": {"status": "ok"},
                    }}},
                    **_health_unavailable(_problem_responses("method-not-allowed", *_SERVER_SLUGS)),
                },
            },
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {"description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}}},
                    **_problem_responses("method-not-allowed", *_SERVER_SLUGS),
                },
            },
        },
        "/problems/{slug}": {
            "get": {
                "operationId": "problemType",
                "summary": "What a problem type means (the page a problem `type` URI points at)",
                "parameters": [{"name": "slug", "in": "path", "required": True,
                                "schema": {"type": "string", "enum": list(DOCUMENTED)}}],
                "responses": {
                    "200": {"description": "Title, status and explanation, as plain text.",
                            "content": {"text/plain; charset=utf-8": {"schema": {"type": "string"}}}},
                    **_problem_responses("not-found", "method-not-allowed", *_SERVER_SLUGS),
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Calculator",
            "version": VERSION,
            "summary": "Exact decimal add, sub, mult and div over HTTP.",
            "description": _DESCRIPTION + "\n**Problem types**\n\n" + _problem_type_list() + "\n",
        },
        "paths": paths,
        "components": {
            "parameters": {"arg1": _operand_parameter("arg1"), "arg2": _operand_parameter("arg2"),
                           "divisor": _operand_parameter("arg2", divisor=True)},
            "schemas": {
                "CalcRequest": {
                    "type": "object",
                    "required": ["op", "arg1", "arg2"],
                    "additionalProperties": False,
                    "properties": {
                        "op": {"type": "string", "enum": list(_A.OPERATIONS)},
                        "arg1": _operand_schema("First operand (the dividend for div), within the size bound."),
                        "arg2": _operand_schema("Second operand (the divisor for div), within the size bound."),
                    },
                    # div by zero is a 422 the schema can rule out: for div, arg2 is not 0 (nor 0.0: JSON
                    # Schema compares numbers by value).
                    "if": {"properties": {"op": {"const": "div"}}, "required": ["op"]},
                    "then": {"properties": {"arg2": {"not": {"const": 0}}}},
                },
                "CalcResult": {
                    "type": "object",
                    "required": ["op", "arg1", "arg2", "result"],
                    "properties": {
                        "op": {"type": "string", "enum": list(_A.OPERATIONS)},
                        "arg1": _number_schema("arg1 as received, in plain notation."),
                        "arg2": _number_schema("arg2 as received, in plain notation."),
                        "result": _number_schema("The exact result (div: rounded to "
                                                 f"{_A.DIVISION_PRECISION} significant digits)."),
                    },
                },
                "Problem": {
                    "type": "object",
                    "description": "An RFC 9457 problem document; extension members depend on the type.",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string", "format": "uri-reference",
                                 "enum": [kind.uri for kind in DOCUMENTED.values()]},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string", "description": "What went wrong and how to fix it."},
                        "instance": {"type": "string", "format": "uri-reference",
                                     "description": "The request path."},
                        "pointer": {"type": "string", "description": "JSON pointer (URI fragment form) to the "
                                                                      "offending member of the body."},
                        "parameter": {"type": "string", "description": "The offending path parameter."},
                        "received": {"description": "The offending value, shortened when long."},
                        "allowed": {"type": "array", "items": {"type": "string"},
                                    "description": "Valid operations, fields or methods."},
                        "missing": {"type": "array", "items": {"type": "string"}},
                        "unknown": {"type": "array", "items": {"type": "string"}},
                        "line": {"type": "integer"},
                        "column": {"type": "integer"},
                        "position": {"type": "integer", "description": "Offset where decoding failed."},
                        "limit": {"type": "integer", "description": "The body size limit in bytes."},
                    },
                },
            },
        },
    }


def document_bytes() -> bytes:
    """The document serialized once; served as-is for every GET /openapi.json."""
    return json.dumps(document(), indent=2).encode()

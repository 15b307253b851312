"""RFC 9457 problem documents: the catalogue of problem types and how one is rendered.

The catalogue is the single source for the ``type`` URIs, their status codes and titles; the
OpenAPI document and the ``/problems/{slug}`` pages are generated from it, so they cannot drift.
"""

from __future__ import annotations

import json
from urllib.parse import quote

# The server's types share the /problems/ space and the class.
from ..protocol.problems import SERVER_PROBLEMS, ProblemType
from ..protocol.writer import status_line

PROBLEM_JSON = "application/problem+json"


def _catalogue(*types: ProblemType) -> dict[str, ProblemType]:
    return {kind.slug: kind for kind in types}


CATALOGUE = _catalogue(
    ProblemType("not-found", 404, "Not found",
                "No resource at this path. The calculator serves GET /{op}/{arg1}/{arg2} for op in add, sub, "
                "mult, div; POST /calc; GET /healthz; GET /openapi.json; GET /problems/{slug}."),
    ProblemType("operand-count", 404, "Wrong number of operands",
                "An operation path takes exactly two operands, /{op}/{arg1}/{arg2}, for example /add/2/3."),
    ProblemType("method-not-allowed", 405, "Method not allowed",
                "The resource exists but not for this method; the Allow header lists the methods it supports."),
    ProblemType("unsupported-media-type", 415, "Unsupported media type",
                "POST /calc takes JSON: Content-Type application/json or application/<something>+json, "
                "with no charset or charset=utf-8."),
    ProblemType("body-too-large", 413, "Request body too large",
                "POST /calc bodies are limited to 16384 bytes; a calculation needs far fewer."),
    ProblemType("invalid-content-length", 400, "Invalid Content-Length",
                "The Content-Length request header is not a non-negative whole number."),
    ProblemType("empty-body", 400, "Empty request body",
                'POST /calc needs a JSON object such as {"op": "add", "arg1": 2, "arg2": 3}.'),
    ProblemType("invalid-utf8", 400, "Body is not UTF-8",
                "JSON bodies must be UTF-8 (RFC 8259); the body has a byte sequence that is not."),
    ProblemType("malformed-json", 400, "Malformed JSON",
                "The body is not valid JSON; line, column and position (in characters) say where parsing stopped."),
    ProblemType("nesting-too-deep", 400, "JSON nested too deeply",
                "The body nests arrays or objects more than 32 levels deep; a calculation is one flat object."),
    ProblemType("not-an-object", 400, "Body is not a JSON object",
                'The body must be a JSON object such as {"op": "add", "arg1": 2, "arg2": 3}.'),
    ProblemType("duplicate-key", 400, "Duplicate key in JSON object",
                "A name appears twice in one JSON object, so its value is ambiguous."),
    ProblemType("missing-field", 400, "Missing field",
                "The object must have the three fields op, arg1 and arg2."),
    ProblemType("unknown-field", 400, "Unknown field",
                "The object has a field other than op, arg1 and arg2 (often a typo)."),
    ProblemType("unknown-operation", 400, "Unknown operation",
                "op must be one of add, sub, mult, div."),
    ProblemType("wrong-type", 400, "Wrong JSON type",
                "A field has the wrong JSON type: op must be a string and arg1 and arg2 JSON numbers "
                "(not strings, booleans, null, arrays or objects)."),
    ProblemType("invalid-number", 400, "Operand is not a number",
                "A path operand must be a decimal number: optional sign, ASCII digits, optional fraction "
                "and exponent, for example 2, -1.5, .5 or 6.02e23."),
    ProblemType("non-finite-number", 400, "Operand is not finite",
                "NaN and Infinity are not numbers an exact calculator can work with, in the path or as JSON literals."),
    ProblemType("operand-out-of-range", 422, "Operand out of range",
                "Operands have at most 100 significant digits, are 0 or have a magnitude in [1e-100, 1e100), "
                "and are written in at most 400 characters."),
    ProblemType("division-by-zero", 422, "Division by zero",
                "The divisor (arg2) is zero, so the quotient is undefined."),
    ProblemType("internal-error", 500, "Internal server error",
                "The calculator failed unexpectedly; the error was logged. Please report it."),
)

# The hosting server's own answers (bad framing, limits, timeouts, overload), documented next to the
# calculator's so every ``type`` a client of this service can receive has its page and its place in
# the OpenAPI document. Their source is the server's protocol core, which sends them.
SERVER_CATALOGUE = _catalogue(*SERVER_PROBLEMS.values())
DOCUMENTED = CATALOGUE | SERVER_CATALOGUE  # every problem type with a /problems/{slug} page


class Problem(Exception):
    """Raised anywhere in the app to answer with a problem document instead of the normal response."""

    def __init__(self, slug: str, detail: str, *, headers: tuple[tuple[str, str], ...] = (),
                 **extensions: object) -> None:
        super().__init__(detail)
        self.kind = CATALOGUE[slug]
        self.detail = detail
        self.headers = headers
        self.extensions = extensions

    def render(self, instance: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body; ``instance`` is the request path as WSGI gives it."""
        document = {
            "type": self.kind.uri,
            "title": self.kind.title,
            "status": self.kind.status,
            "detail": self.detail,
            "instance": path_to_uri(instance),
            **self.extensions,
        }
        # ASCII-only output: a detail may quote client text that is not valid Unicode (lone surrogates).
        body = json.dumps(document).encode("ascii")
        headers = [("Content-Type", PROBLEM_JSON), ("Content-Length", str(len(body))), *self.headers]
        return status_line(self.kind.status), headers, body


def path_to_uri(path: str) -> str:
    """Percent-encode a WSGI path (bytes carried as latin-1 characters) back into URI form."""
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:  # a server that broke the WSGI string rule; keep the text readable
        raw = path.encode("utf-8", "surrogatepass")
    return quote(raw, safe="/:@!$&'()*+,;=-._~")


def shown(text: str, limit: int = 40) -> str:
    """Client text for a detail message: bounded in length, with the total length when cut."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"

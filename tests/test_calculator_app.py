"""Unit tests of the calculator WSGI app, called directly with constructed environs (no server).

Every request goes through ``wsgiref.validate.validator`` so each test also checks PEP 3333
conformance. Expected results are written out by hand, or come from an independent oracle
(``fractions.Fraction``), never from the code under test.
"""

from __future__ import annotations

import io
import json
import re
import string
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import WSGIWarning, validator

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.calculator import app, arithmetic, calc_request
from server.calculator.calc_request import MAX_DEPTH
from server.calculator.problems import CATALOGUE
from server.calculator.request_body import MAX_BODY_BYTES

CHECKED_APP = validator(app)
PLAIN_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?")  # no exponent, no trailing zeros
JSON_TYPE = "application/json"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    errors: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        # Decimal hooks so that a test sees exactly the number text the app wrote.
        return json.loads(self.body, parse_float=Decimal, parse_int=Decimal)


def call(method: str, path: str, body: bytes | None = None, *, content_type: str | None = None,
         content_length: str | None = "auto", stream: Any = None, script_name: str = "", query: str = "",
         validate: bool = True) -> Reply:
    """Run one request through the (by default validator-wrapped) app and collect the response."""
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": script_name,
                               "QUERY_STRING": query}
    setup_testing_defaults(environ)
    environ["wsgi.input"] = stream if stream is not None else io.BytesIO(body or b"")
    errors = environ["wsgi.errors"] = io.StringIO()
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    if content_length == "auto":
        if body is not None:
            environ["CONTENT_LENGTH"] = str(len(body))
    elif content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    captured: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        captured["status"], captured["headers"] = status, headers
        return lambda data: pytest.fail("the app must not use the write() callable")

    with warnings.catch_warnings():
        warnings.simplefilter("error", WSGIWarning)
        result = (CHECKED_APP if validate else app)(environ, start_response)
        try:
            body_out = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
    names = [name.lower() for name, _ in captured["headers"]]
    assert len(names) == len(set(names)), f"repeated header in {captured['headers']}"
    headers = {name.lower(): value for name, value in captured["headers"]}
    assert headers["content-length"] == str(len(body_out)), "Content-Length must match the body"
    return Reply(int(captured["status"].split(" ", 1)[0]), headers, body_out, errors.getvalue())


def calc(document: Any, *, content_type: str = JSON_TYPE) -> Reply:
    return call("POST", "/calc", json.dumps(document).encode(), content_type=content_type)


def calc_raw(body: bytes, *, content_type: str = JSON_TYPE) -> Reply:
    return call("POST", "/calc", body, content_type=content_type)


def assert_problem(reply: Reply, slug: str, status: int) -> dict[str, Any]:
    """The reply is an RFC 9457 document of the given type, and returns it for further checks."""
    assert reply.status == status, reply.body
    assert reply.headers["content-type"] == "application/problem+json"
    problem = json.loads(reply.body)
    assert problem["type"] == f"/problems/{slug}"
    assert problem["status"] == status
    assert problem["title"] == CATALOGUE[slug].title
    assert isinstance(problem["detail"], str) and len(problem["detail"]) > 10
    assert problem["instance"].startswith("/")
    return problem


def test_catalogue_statuses_match_the_documented_choices() -> None:
    # Pins the status-code decisions so a change is a visible, deliberate edit.
    assert {slug: kind.status for slug, kind in CATALOGUE.items()} == {
        "not-found": 404, "operand-count": 404, "method-not-allowed": 405, "unsupported-media-type": 415,
        "body-too-large": 413, "invalid-content-length": 400, "empty-body": 400, "invalid-utf8": 400,
        "malformed-json": 400, "nesting-too-deep": 400, "not-an-object": 400, "duplicate-key": 400,
        "missing-field": 400, "unknown-field": 400, "unknown-operation": 400, "wrong-type": 400,
        "invalid-number": 400, "non-finite-number": 400, "operand-out-of-range": 422, "division-by-zero": 422,
        "internal-error": 500,
    }


def test_problem_descriptions_state_the_enforced_limits() -> None:
    # The catalogue is prose; make sure its numbers are the ones the code enforces.
    assert str(MAX_BODY_BYTES) in CATALOGUE["body-too-large"].description
    assert f"{MAX_DEPTH} levels" in CATALOGUE["nesting-too-deep"].description
    bound = CATALOGUE["operand-out-of-range"].description
    assert f"{arithmetic.MAX_SIGNIFICANT_DIGITS} significant digits" in bound
    assert f"[1e{arithmetic.MIN_ADJUSTED_EXPONENT}, 1e{arithmetic.MAX_ADJUSTED_EXPONENT + 1})" in bound
    assert f"{arithmetic.MAX_OPERAND_CHARS} characters" in bound


# --- results -------------------------------------------------------------------------------------

THIRD = "0." + "3" * 100
TWO_THIRDS = "0." + "6" * 99 + "7"
HUNDRED_NINES = "9" * 100

PATH_CASES = [
    ("add", "2", "3", "5"),
    ("sub", "2", "3", "-1"),
    ("mult", "2", "4", "8"),
    ("div", "8", "2", "4"),
    ("add", "-1.5", "2", "0.5"),
    ("add", "0.1", "0.2", "0.3"),
    ("sub", "0.3", "0.1", "0.2"),
    ("mult", "2.5", "4", "10"),
    ("mult", "1.10", "3", "3.3"),
    ("div", "1", "4", "0.25"),
    ("div", "-7", "2", "-3.5"),
    ("div", "1", "3", THIRD),
    ("div", "2", "3", TWO_THIRDS),
    ("div", "1", "8", "0.125"),
    ("add", "1e2", "0", "100"),
    ("mult", "1E+3", "1", "1000"),
    ("mult", "-0", "5", "0"),
    ("sub", "0.5", "0.5", "0"),
    ("add", "+2", ".5", "2.5"),
    ("add", "5.", "0", "5"),
    ("add", "000012", "0.000", "12"),
    ("mult", "0.000001", "1", "0.000001"),
    ("mult", "1e-7", "1", "0.0000001"),
    ("add", "9007199254740993", "0", "9007199254740993"),  # not representable as a float
    ("mult", "99999999999999999999", "99999999999999999999", "9999999999999999999800000000000000000001"),
    ("add", HUNDRED_NINES, "1", "1" + "0" * 100),
    ("div", HUNDRED_NINES, "1", HUNDRED_NINES),  # a quotient that fits in 100 digits is exact
    ("mult", "1e-90", "1e-90", "0." + "0" * 179 + "1"),
]


@pytest.mark.parametrize(("op", "arg1", "arg2", "expected"), PATH_CASES)
def test_path_operations(op: str, arg1: str, arg2: str, expected: str) -> None:
    reply = call("GET", f"/{op}/{arg1}/{arg2}")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert reply.text == expected


@pytest.mark.parametrize(("op", "arg1", "arg2", "expected"), PATH_CASES)
def test_calc_operations_agree_with_the_path_form(op: str, arg1: str, arg2: str, expected: str) -> None:
    # JSON has no "+2", ".5" or "5." spelling; write those operands as JSON number text.
    def as_json(text: str) -> str:
        text = text.lstrip("+")
        text = "0" + text if text.startswith(".") else text
        text = text + "0" if text.endswith(".") else text
        return re.sub(r"^(-?)0+(?=\d)", r"\1", text)

    body = f'{{"op": "{op}", "arg1": {as_json(arg1)}, "arg2": {as_json(arg2)}}}'.encode()
    reply = calc_raw(body)
    assert reply.status == 200, reply.body
    assert reply.headers["content-type"] == "application/json"
    assert re.search(rf'"result":{re.escape(expected)}}}$', reply.text), reply.text
    document = reply.json()
    assert document["op"] == op
    assert document["result"] == Decimal(expected)
    assert document["arg1"] == Decimal(as_json(arg1)) and document["arg2"] == Decimal(as_json(arg2))


def test_calc_example_from_the_brief() -> None:
    reply = calc({"op": "mult", "arg1": 2, "arg2": 4})
    assert reply.status == 200
    assert json.loads(reply.body) == {"op": "mult", "arg1": 2, "arg2": 4, "result": 8}


def test_calc_accepts_json_variants() -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON;Charset=\"UTF-8\"",
                         "application/vnd.calc+json", "application/json; foo=bar"):
        assert calc({"op": "add", "arg1": 1, "arg2": 1}, content_type=content_type).text.endswith('"result":2}')
    assert calc_raw(b' \n{"arg2": 1, "op": "sub", "arg1": 1}\t').json()["result"] == 0


def test_head_matches_get() -> None:
    for path in ("/add/2/3", "/healthz", "/openapi.json", "/problems/not-found"):
        get, head = call("GET", path), call("HEAD", path)
        assert head.status == get.status == 200
        assert head.headers == get.headers


def test_health() -> None:
    reply = call("GET", "/healthz")
    assert reply.status == 200
    assert reply.headers["content-type"] == "application/json"
    assert json.loads(reply.body) == {"status": "ok"}


def test_query_string_is_ignored() -> None:
    assert call("GET", "/add/2/3", query="arg1=7&x").text == "5"


# --- problems ------------------------------------------------------------------------------------

BIG_INTEGER = "1" * 101

PATH_PROBLEMS = [
    ("/div/1/0", "division-by-zero", 422),
    ("/div/0/0", "division-by-zero", 422),
    ("/div/5/-0.00", "division-by-zero", 422),
    ("/add/x/2", "invalid-number", 400),
    ("/add/2/", "invalid-number", 400),
    ("/add/1,5/2", "invalid-number", 400),
    ("/add/1_000/2", "invalid-number", 400),
    ("/add/ 1/2", "invalid-number", 400),
    ("/add/0x10/2", "invalid-number", 400),
    ("/add/\xd9\xa2/2", "invalid-number", 400),  # ARABIC-INDIC DIGIT TWO, as UTF-8 bytes in latin-1
    ("/add/1e/2", "invalid-number", 400),
    ("/add/NaN/2", "non-finite-number", 400),
    ("/add/2/-Infinity", "non-finite-number", 400),
    ("/mult/inf/2", "non-finite-number", 400),
    ("/add/sNaN/2", "non-finite-number", 400),
    (f"/add/{BIG_INTEGER}/2", "operand-out-of-range", 422),
    ("/add/1e100/2", "operand-out-of-range", 422),
    ("/add/1e-101/2", "operand-out-of-range", 422),
    ("/add/1e999999999/2", "operand-out-of-range", 422),
    ("/add/1e-99999999999999999999999999/2", "operand-out-of-range", 422),
    ("/add/" + "1" * 8000 + "/2", "operand-out-of-range", 422),
    ("/add/2", "operand-count", 404),
    ("/add/2/3/4", "operand-count", 404),
    ("/add/2/3/", "operand-count", 404),
    ("/add", "operand-count", 404),
    ("/", "not-found", 404),
    ("/pow/2/3", "not-found", 404),
    ("/ADD/2/3", "not-found", 404),
    ("/calc/", "not-found", 404),
    ("/healthz/extra", "not-found", 404),
    ("/problems/no-such-problem", "not-found", 404),
]


@pytest.mark.parametrize(("path", "slug", "status"), PATH_PROBLEMS)
def test_path_problems(path: str, slug: str, status: int) -> None:
    problem = assert_problem(call("GET", path), slug, status)
    if slug in ("invalid-number", "non-finite-number", "operand-out-of-range"):
        assert problem["parameter"] in ("arg1", "arg2")
        assert problem["parameter"] in problem["detail"]


def test_invalid_operand_names_the_operand_and_what_was_received() -> None:
    problem = assert_problem(call("GET", "/sub/4/four"), "invalid-number", 400)
    assert problem["parameter"] == "arg2" and problem["received"] == "four"
    assert "arg2" in problem["detail"] and "'four'" in problem["detail"]


def test_received_text_is_shown_as_the_client_typed_it() -> None:
    # PATH_INFO carries bytes as latin-1; "é" arrives as "\xc3\xa9" and is shown as "é" again.
    problem = assert_problem(call("GET", "/add/caf\xc3\xa9/1"), "invalid-number", 400)
    assert problem["received"] == "café"
    assert problem["instance"] == "/add/caf%C3%A9/1"


def test_long_received_text_is_shortened() -> None:
    problem = assert_problem(call("GET", "/add/" + "x" * 5000 + "/1"), "invalid-number", 400)
    assert len(problem["detail"]) < 300 and "5000 characters" in problem["detail"]


def test_instance_includes_script_name() -> None:
    problem = assert_problem(call("GET", "/nothing", script_name="/api"), "not-found", 404)
    assert problem["instance"] == "/api/nothing"


def test_operand_count_explains_the_shape() -> None:
    problem = assert_problem(call("GET", "/mult/2"), "operand-count", 404)
    assert "/mult/{arg1}/{arg2}" in problem["detail"]
    assert "trailing slash" in assert_problem(call("GET", "/mult/2/3/"), "operand-count", 404)["detail"]


def test_size_bound_edges() -> None:
    assert call("GET", f"/add/{HUNDRED_NINES}/0").text == HUNDRED_NINES  # 100 digits: accepted
    assert call("GET", "/add/9.99e99/0").text == "999" + "0" * 97
    assert call("GET", "/add/1e-100/0").text == "0." + "0" * 99 + "1"
    assert call("GET", "/add/0e999999/1").text == "1"  # zero is in range whatever its exponent
    # Trailing zeros are not significant digits, but the text length bound still applies.
    assert call("GET", "/add/1." + "0" * 300 + "/1").text == "2"
    problem = assert_problem(call("GET", "/add/1." + "0" * 400 + "/1"), "operand-out-of-range", 422)
    assert "402 characters" in problem["detail"]
    problem = assert_problem(call("GET", f"/add/1.{HUNDRED_NINES}/1"), "operand-out-of-range", 422)
    assert "101 significant digits" in problem["detail"]


def test_longest_possible_result() -> None:
    # (10**100 - 1)**2 = 10**200 - 2 * 10**100 + 1, shifted to the 10**-398 place, negated.
    smallest_digit = f"{HUNDRED_NINES}e-199"
    reply = call("GET", f"/mult/-{smallest_digit}/{smallest_digit}")
    assert reply.text == "-0." + "0" * 198 + "9" * 99 + "8" + "0" * 99 + "1"
    assert len(reply.text) == arithmetic.MAX_RESULT_CHARS


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/add/2/3", "GET, HEAD"),
    ("DELETE", "/div/2/3", "GET, HEAD"),
    ("PUT", "/healthz", "GET, HEAD"),
    ("POST", "/openapi.json", "GET, HEAD"),
    ("POST", "/problems/not-found", "GET, HEAD"),
    ("GET", "/calc", "POST"),
    ("HEAD", "/calc", "POST"),
    ("OPTIONS", "/calc", "POST"),
])
def test_wrong_method_is_405_with_allow(method: str, path: str, allow: str) -> None:
    problem = assert_problem(call(method, path), "method-not-allowed", 405)
    assert call(method, path).headers["allow"] == allow
    assert method in problem["detail"]
    assert problem["allowed"] == allow.split(", ")


def test_unknown_path_is_404_whatever_the_method() -> None:
    assert_problem(call("DELETE", "/nothing"), "not-found", 404)


BODY_PROBLEMS: list[tuple[str, bytes, str, int]] = [
    ("empty", b"", "empty-body", 400),
    ("latin-1 bytes", b'{"op": "add", "arg1": 1, "arg2": "\xe9"}', "invalid-utf8", 400),
    ("UTF-16", '{"op": "add", "arg1": 1, "arg2": 2}'.encode("utf-16"), "invalid-utf8", 400),
    ("truncated", b'{"op": "add", "arg1": 1,', "malformed-json", 400),
    ("trailing data", b'{"op": "add", "arg1": 1, "arg2": 2} {}', "malformed-json", 400),
    ("single quotes", b"{'op': 'add'}", "malformed-json", 400),
    ("whitespace only", b"  ", "malformed-json", 400),
    ("leading zero", b'{"op": "add", "arg1": 01, "arg2": 2}', "malformed-json", 400),
    ("deep arrays", b"[" * 16_000, "nesting-too-deep", 400),
    ("deep objects", b'{"a":' * 2000 + b"1" + b"}" * 2000, "nesting-too-deep", 400),
    ("33 levels", b'{"op": "add", "arg1": 1, "arg2": ' + b"[" * 32 + b"]" * 32 + b"}", "nesting-too-deep", 400),
    ("32 levels", b'{"op": "add", "arg1": 1, "arg2": ' + b"[" * 31 + b"]" * 31 + b"}", "wrong-type", 400),
    ("brackets in strings", b'{"op": "' + b"[" * 100 + b'", "arg1": 1, "arg2": 2}', "unknown-operation", 400),
    ("array", b"[1, 2]", "not-an-object", 400),
    ("number", b"42", "not-an-object", 400),
    ("string", b'"add"', "not-an-object", 400),
    ("null", b"null", "not-an-object", 400),
    ("duplicate", b'{"op": "add", "arg1": 1, "arg1": 2, "arg2": 3}', "duplicate-key", 400),
    ("missing arg2", b'{"op": "add", "arg1": 1}', "missing-field", 400),
    ("empty object", b"{}", "missing-field", 400),
    ("extra field", b'{"op": "add", "arg1": 1, "arg2": 2, "arg3": 3}', "unknown-field", 400),
    ("typo", b'{"op": "add", "arg_1": 1, "arg2": 2}', "unknown-field", 400),
    ("unknown op", b'{"op": "pow", "arg1": 1, "arg2": 2}', "unknown-operation", 400),
    ("op case", b'{"op": "ADD", "arg1": 1, "arg2": 2}', "unknown-operation", 400),
    ("op number", b'{"op": 1, "arg1": 1, "arg2": 2}', "wrong-type", 400),
    ("numeric string", b'{"op": "add", "arg1": "2", "arg2": 2}', "wrong-type", 400),
    ("word string", b'{"op": "add", "arg1": "two", "arg2": 2}', "wrong-type", 400),
    ("boolean", b'{"op": "add", "arg1": true, "arg2": 2}', "wrong-type", 400),
    ("null operand", b'{"op": "add", "arg1": null, "arg2": 2}', "wrong-type", 400),
    ("array operand", b'{"op": "add", "arg1": [1], "arg2": 2}', "wrong-type", 400),
    ("object operand", b'{"op": "add", "arg1": {"v": 1}, "arg2": 2}', "wrong-type", 400),
    ("NaN literal", b'{"op": "add", "arg1": NaN, "arg2": 2}', "non-finite-number", 400),
    ("Infinity literal", b'{"op": "add", "arg1": Infinity, "arg2": 2}', "non-finite-number", 400),
    ("-Infinity literal", b'{"op": "add", "arg1": -Infinity, "arg2": 2}', "non-finite-number", 400),
    ("huge exponent", b'{"op": "add", "arg1": 1e999999999, "arg2": 2}', "operand-out-of-range", 422),
    ("float overflow", b'{"op": "add", "arg1": 1e400, "arg2": 2}', "operand-out-of-range", 422),
    ("many digits", b'{"op": "add", "arg1": ' + b"7" * 10_000 + b', "arg2": 2}', "operand-out-of-range", 422),
    ("div by zero", b'{"op": "div", "arg1": 1, "arg2": 0}', "division-by-zero", 422),
    ("div by 0.0", b'{"op": "div", "arg1": 1, "arg2": -0.0e5}', "division-by-zero", 422),
]


def test_deep_nesting_is_refused_even_with_a_raised_recursion_limit() -> None:
    # A host may raise the limit; the C decoder would then recurse 16,000 levels into the C stack.
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)
    try:
        assert_problem(calc_raw(b"[" * MAX_BODY_BYTES), "nesting-too-deep", 400)
    finally:
        sys.setrecursionlimit(previous)


@pytest.mark.parametrize(("body", "slug", "status"), [case[1:] for case in BODY_PROBLEMS],
                         ids=[case[0] for case in BODY_PROBLEMS])
def test_calc_problems(body: bytes, slug: str, status: int) -> None:
    problem = assert_problem(calc_raw(body), slug, status)
    assert problem["instance"] == "/calc"


def test_calc_problem_members_point_at_the_field() -> None:
    problem = assert_problem(calc_raw(b'{"op": "add", "arg1": 1, "arg2": "2"}'), "wrong-type", 400)
    assert problem["pointer"] == "#/arg2"
    assert 'write 2 instead of "2"' in problem["detail"]
    problem = assert_problem(calc_raw(b'{"op": "add", "arg1": true, "arg2": 1}'), "wrong-type", 400)
    assert problem["pointer"] == "#/arg1" and "boolean true" in problem["detail"]
    problem = assert_problem(calc_raw(b'{"op": "add", "arg1": 1, "arg2": NaN}'), "non-finite-number", 400)
    assert problem["pointer"] == "#/arg2" and "NaN" in problem["detail"]
    problem = assert_problem(calc_raw(b'{"op": "add", "arg1": 1e400, "arg2": 1}'), "operand-out-of-range", 422)
    assert problem["pointer"] == "#/arg1"


def test_unknown_operation_lists_the_valid_ones() -> None:
    problem = assert_problem(calc({"op": "pow", "arg1": 1, "arg2": 2}), "unknown-operation", 400)
    assert problem["allowed"] == ["add", "sub", "mult", "div"]
    assert all(op in problem["detail"] for op in ("add", "sub", "mult", "div"))
    assert problem["received"] == "pow"


def test_field_problems_name_the_fields() -> None:
    problem = assert_problem(calc({"op": "add", "arg1": 1}), "missing-field", 400)
    assert problem["missing"] == ["arg2"] and "arg2" in problem["detail"]
    problem = assert_problem(calc({"op": "add", "arg1": 1, "arg2": 2, "a/b~": 3}), "unknown-field", 400)
    assert problem["unknown"] == ["a/b~"] and problem["pointer"] == "#/a~1b~0"
    problem = assert_problem(calc_raw(b'{"op": "add", "op": "sub", "arg1": 1, "arg2": 2}'), "duplicate-key", 400)
    assert problem["key"] == "op"


def test_malformed_json_says_where() -> None:
    problem = assert_problem(calc_raw(b'{"op": "add",\n "arg1": 1,,\n "arg2": 2}'), "malformed-json", 400)
    # The second comma: line 2 starts at offset 14 and the comma is its 12th character.
    assert (problem["line"], problem["column"], problem["position"]) == (2, 12, 25)
    assert "line 2, column 12" in problem["detail"]


def test_invalid_utf8_says_where() -> None:
    problem = assert_problem(calc_raw(b'{"op": "\xff"}'), "invalid-utf8", 400)
    assert problem["position"] == 8 and "0xff" in problem["detail"]


def test_lone_surrogate_in_json_string_does_not_break_the_problem() -> None:
    problem = assert_problem(calc_raw(b'{"op": "\\ud800", "arg1": 1, "arg2": 2}'), "unknown-operation", 400)
    assert problem["received"] == "\ud800"
    problem = assert_problem(calc_raw(b'{"op": "add", "arg1": 1, "arg2": 2, "\\udc00x": 1}'), "unknown-field", 400)
    assert problem["unknown"] == ["\udc00x"] and problem["pointer"] == "#/%ED%B0%80x"
    problem = assert_problem(calc_raw(b'{"\\ud800": 1, "\\ud800": 2}'), "duplicate-key", 400)
    assert problem["key"] == "\ud800"


@pytest.mark.parametrize("content_type", [
    None, "", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/xml", "application/jsonp", "text/json", "application/json; charset=latin-1",
    "application/json; charset=utf-16",
])
def test_unsupported_media_type(content_type: str | None) -> None:
    reply = call("POST", "/calc", b'{"op": "add", "arg1": 1, "arg2": 2}', content_type=content_type)
    problem = assert_problem(reply, "unsupported-media-type", 415)
    assert "application/json" in problem["detail"] or "UTF-8" in problem["detail"]


class CountingStream:
    """A wsgi.input that would produce ``size`` bytes (endless if None), counting what was read."""

    def __init__(self, size: int | None, piece: int = 1 << 20) -> None:
        self.size, self.piece, self.read_bytes = size, piece, 0

    def read(self, size: int = -1) -> bytes:
        left = self.piece if self.size is None else self.size - self.read_bytes
        count = min(left, self.piece) if size is None or size < 0 else min(left, size, self.piece)
        self.read_bytes += count
        return b" " * count

    def readline(self, size: int = -1) -> bytes:  # pragma: no cover - part of the WSGI input API
        return self.read(size)

    def readlines(self, hint: int = -1) -> list[bytes]:  # pragma: no cover
        return [self.read(hint)]

    def __iter__(self) -> Iterator[bytes]:  # pragma: no cover
        return iter(self.readlines())


def test_body_too_large_by_content_length_reads_nothing() -> None:
    stream = CountingStream(MAX_BODY_BYTES + 1)
    reply = call("POST", "/calc", content_type=JSON_TYPE, content_length=str(MAX_BODY_BYTES + 1), stream=stream)
    problem = assert_problem(reply, "body-too-large", 413)
    assert problem["limit"] == MAX_BODY_BYTES
    assert stream.read_bytes == 0
    assert_problem(call("POST", "/calc", content_type=JSON_TYPE, content_length="9" * 40, stream=stream),
                   "body-too-large", 413)


def test_endless_body_without_content_length_is_read_only_to_the_limit() -> None:
    stream = CountingStream(None, piece=1000)
    reply = call("POST", "/calc", content_type=JSON_TYPE, content_length=None, stream=stream)
    assert_problem(reply, "body-too-large", 413)
    assert stream.read_bytes == MAX_BODY_BYTES + 1


def test_body_at_the_limit_is_accepted() -> None:
    document = b'{"op": "add", "arg1": 1, "arg2": 2}'
    padded = document + b" " * (MAX_BODY_BYTES - len(document))
    assert calc_raw(padded).json()["result"] == 3
    assert_problem(calc_raw(padded + b" "), "body-too-large", 413)


def test_body_without_content_length_is_read_to_eof() -> None:
    # What a server does after decoding a chunked body: no CONTENT_LENGTH, the stream ends at EOF.
    body = b'{"op": "div", "arg1": 1, "arg2": 8}'
    for content_length in (None, ""):
        reply = call("POST", "/calc", content_type=JSON_TYPE, content_length=content_length,
                     stream=io.BytesIO(body))
        assert reply.json()["result"] == Decimal("0.125")
    assert_problem(call("POST", "/calc", content_type=JSON_TYPE, content_length=None, stream=io.BytesIO()),
                   "empty-body", 400)


def test_short_reads_are_reassembled() -> None:
    body = b'{"op": "sub", "arg1": 10, "arg2": 0.5}'

    class Trickle(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            return super().read(1)

    reply = call("POST", "/calc", content_type=JSON_TYPE, content_length=str(len(body)), stream=Trickle(body))
    assert reply.json()["result"] == Decimal("9.5")


@pytest.mark.parametrize("content_length", ["abc", "-1", "1.5", " 12", "+12", "\u0661\u0662"])
def test_invalid_content_length(content_length: str) -> None:
    # Not through the validator, which itself rejects such an environ; a server might still pass one on.
    reply = call("POST", "/calc", b"{}", content_type=JSON_TYPE, content_length=content_length, validate=False)
    assert_problem(reply, "invalid-content-length", 400)


def test_internal_error_is_a_logged_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(a: Decimal, b: Decimal) -> Decimal:
        raise RuntimeError("simulated bug")

    monkeypatch.setitem(arithmetic.OPERATIONS, "add", broken)
    monkeypatch.setitem(arithmetic.INTEGER_OPERATIONS, "add", broken)
    for path in ("/add/1/2", "/add/1.5/2"):  # whole numbers take the int path, others the Decimal one
        reply = call("GET", path)
        problem = assert_problem(reply, "internal-error", 500)
        assert "simulated bug" not in problem["detail"]  # no internals leak to the client
        assert "RuntimeError: simulated bug" in reply.errors


def test_every_problem_type_is_exercised() -> None:
    exercised = {slug for _, slug, _ in PATH_PROBLEMS} | {slug for _, _, slug, _ in BODY_PROBLEMS}
    exercised |= {"method-not-allowed", "unsupported-media-type", "body-too-large", "invalid-content-length",
                  "internal-error"}  # covered by the dedicated tests above
    assert exercised == set(CATALOGUE)


@pytest.mark.parametrize("slug", list(CATALOGUE))
def test_problem_type_uris_dereference_to_documentation(slug: str) -> None:
    reply = call("GET", f"/problems/{slug}")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/plain; charset=utf-8"
    assert CATALOGUE[slug].title in reply.text and str(CATALOGUE[slug].status) in reply.text


# --- OpenAPI -------------------------------------------------------------------------------------

def test_openapi_document() -> None:
    reply = call("GET", "/openapi.json")
    assert reply.status == 200 and reply.headers["content-type"] == "application/json"
    document = json.loads(reply.body)
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert set(document["paths"]) == {"/add/{arg1}/{arg2}", "/sub/{arg1}/{arg2}", "/mult/{arg1}/{arg2}",
                                      "/div/{arg1}/{arg2}", "/calc", "/healthz", "/openapi.json",
                                      "/problems/{slug}"}
    text = reply.text
    for kind in CATALOGUE.values():
        if kind.slug != "internal-error":
            assert f'"type": "{kind.uri}"' in text, kind.slug
    description = document["info"]["description"]
    for fact in ("100 significant digits", "1e-100", "1e100", "400 characters", "half to even"):
        assert fact in description


def test_openapi_references_resolve() -> None:
    document = json.loads(call("GET", "/openapi.json").body)

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    yield value
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for item in node:
                yield from refs(item)

    found = list(refs(document))
    assert found
    for ref in found:
        node: Any = document
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict)


def test_openapi_operand_bounds_agree_with_the_server() -> None:
    """The path operands' schema (a bounded number) allows exactly what the server answers, at the edges
    of the bound too: what it allows is answered 200, what it refuses 422 (before, the schema was a
    syntax pattern and let /add/-92E+282/3 through)."""
    document = json.loads(call("GET", "/openapi.json").body)
    parameters = document["components"]["parameters"]
    arg1 = jsonschema.Draft202012Validator(parameters["arg1"]["schema"])
    divisor = jsonschema.Draft202012Validator(parameters["divisor"]["schema"])
    inside = ("2", "-1.5", ".5", "5.", "+6.02e23", "1E-7", "0", "-0.0", "1e-100", "-1e-100", "9.99e99",
              "-9.99e99", "12345678" * 12)
    outside = ("1e100", "-92E+282", "1e-101", "-1e-101", "1" + "0" * 100, "0.1e-100", "1e999999")
    for text in inside:
        assert arg1.is_valid(float(text)) and call("GET", f"/add/{text}/0").status == 200, text
    for text in outside:
        assert not arg1.is_valid(float(text)) and call("GET", f"/add/{text}/0").status == 422, text
    for text in ("0", "-0.0", "0e5"):
        assert not divisor.is_valid(float(text)) and call("GET", f"/div/1/{text}").status == 422, text
    assert divisor.is_valid(float("1e-100")) and call("GET", "/div/1/1e-100").status == 200
    for text in ("x", "1_0", " 1", "1e", "--1", "NaN", "0x1"):
        assert call("GET", f"/add/{text}/0").status == 400, text


# --- properties ----------------------------------------------------------------------------------

@st.composite
def scaled_decimals(draw: st.DrawFn) -> Decimal:
    """Any number of significant digits up to 100, with the leading digit anywhere in the bound."""
    digits = draw(st.integers(min_value=1, max_value=100))
    coefficient = draw(st.integers(min_value=10 ** (digits - 1), max_value=10 ** digits - 1))
    adjusted = draw(st.integers(min_value=-100, max_value=99))
    sign = draw(st.sampled_from(["", "-"]))
    return Decimal(f"{sign}{coefficient}E{adjusted - digits + 1}")


def bounded_decimals() -> st.SearchStrategy[Decimal]:
    """Finite decimals inside the documented bound, including its corners."""
    small = st.decimals(allow_nan=False, allow_infinity=False, min_value=-10**6, max_value=10**6, places=6)
    corners = st.sampled_from([Decimal(0), Decimal("-0"), Decimal("1e-100"), Decimal("-9.99e99"),
                               Decimal(HUNDRED_NINES), Decimal("-" + HUNDRED_NINES + "e-199")])
    return st.one_of(small, scaled_decimals(), corners)


def plain(number: Decimal) -> str:
    """Operand text for a path, independent of the app's own formatter."""
    return str(number)  # Decimal's to-scientific-string, which the path grammar accepts


def leading_place(value: Fraction) -> int:
    """The power of ten of the leading digit of a positive fraction."""
    place = len(str(value.numerator)) - len(str(value.denominator))
    while Fraction(10) ** place > value:
        place -= 1
    while Fraction(10) ** (place + 1) <= value:
        place += 1
    return place


@settings(max_examples=300)
@given(op=st.sampled_from(["add", "sub", "mult"]), a=bounded_decimals(), b=bounded_decimals())
def test_add_sub_mult_are_exact(op: str, a: Decimal, b: Decimal) -> None:
    reply = call("GET", f"/{op}/{plain(a)}/{plain(b)}")
    assert reply.status == 200, reply.body
    assert PLAIN_NUMBER.fullmatch(reply.text), reply.text
    assert len(reply.text) <= arithmetic.MAX_RESULT_CHARS
    exact = {"add": Fraction(a) + Fraction(b), "sub": Fraction(a) - Fraction(b), "mult": Fraction(a) * Fraction(b)}
    assert Fraction(reply.text) == exact[op]


@settings(max_examples=300)
@given(a=bounded_decimals(), b=bounded_decimals().filter(bool))
def test_div_is_correctly_rounded_to_100_digits(a: Decimal, b: Decimal) -> None:
    reply = call("GET", f"/div/{plain(a)}/{plain(b)}")
    assert reply.status == 200, reply.body
    assert PLAIN_NUMBER.fullmatch(reply.text), reply.text
    assert len(reply.text) <= arithmetic.MAX_RESULT_CHARS
    exact = Fraction(a) / Fraction(b)
    result = Fraction(reply.text)
    significant = reply.text.lstrip("-").replace(".", "").strip("0")
    assert len(significant) <= 100
    if exact == 0:
        assert result == 0
        return
    # Half a unit in the 100th significant digit of the exact quotient bounds the rounding error.
    assert abs(result - exact) <= Fraction(10) ** (leading_place(abs(exact)) - 99) / 2


@given(a=bounded_decimals(), b=bounded_decimals(), op=st.sampled_from(["add", "sub", "mult", "div"]))
def test_calc_matches_the_path_form(a: Decimal, b: Decimal, op: str) -> None:
    body = f'{{"op": "{op}", "arg1": {a}, "arg2": {b}}}'.encode()
    via_json, via_path = calc_raw(body), call("GET", f"/{op}/{plain(a)}/{plain(b)}")
    if via_path.status == 200:
        assert via_json.status == 200
        assert via_json.text.endswith(f'"result":{via_path.text}}}')
    else:
        assert json.loads(via_json.body)["type"] == json.loads(via_path.body)["type"] == "/problems/division-by-zero"


PATH_SAFE_TEXT = st.text(st.characters(blacklist_characters="/"), max_size=60) | st.text(
    alphabet=string.digits + "+-.eE", max_size=30)


@given(op=st.sampled_from(["add", "sub", "mult", "div"]), a=PATH_SAFE_TEXT, b=PATH_SAFE_TEXT)
def test_arbitrary_path_operands_never_fail(op: str, a: str, b: str) -> None:
    # WSGI hands the path over as latin-1 decoded bytes; do the same with the UTF-8 the client sent.
    def wsgi(text: str) -> str:
        return text.encode("utf-8", "surrogatepass").decode("latin-1")

    reply = call("GET", f"/{op}/{wsgi(a)}/{wsgi(b)}")
    if reply.status == 200:
        assert PLAIN_NUMBER.fullmatch(reply.text)
    else:
        assert reply.status in (400, 422)
        assert json.loads(reply.body)["type"] in {kind.uri for kind in CATALOGUE.values()}


# Any code point, lone surrogates included (JSON can carry them as \ud800 escapes); they are rare
# among all code points, so a few are also offered directly.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=10) | st.sampled_from(["\ud800", "a\udfff"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3),
    max_leaves=10,
)


@given(document=st.dictionaries(st.sampled_from(["op", "arg1", "arg2"]) | ANY_TEXT,
                                JSON_VALUES | st.sampled_from(["add", "sub", "mult", "div"]), max_size=4)
       | JSON_VALUES)
def test_arbitrary_json_never_fails(document: Any) -> None:
    reply = calc(document)
    assert reply.status in (200, 400, 422), reply.body
    if reply.status != 200:
        assert reply.headers["content-type"] == "application/problem+json"


@given(body=st.binary(max_size=200))
def test_arbitrary_bytes_never_fail(body: bytes) -> None:
    reply = calc_raw(body)
    assert reply.status in (200, 400, 422)


def test_hostile_inputs_are_cheap() -> None:
    # Each of these would take seconds (or blow the stack) with naive int()/float()/regex handling.
    hostile = [
        ("GET", "/add/" + "1" * 8000 + "/1", None),
        ("GET", "/add/" + "1" * 8000 + "x/1", None),
        ("GET", "/add/1e" + "9" * 8000 + "/1", None),
        ("GET", "/mult/" + "9" * 100 + "e99/1", None),
        ("POST", "/calc", b'{"op": "add", "arg1": ' + b"9" * 16000 + b', "arg2": 1}'),
        ("POST", "/calc", b'{"op": "add", "arg1": 1e' + b"9" * 16000 + b', "arg2": 1}'),
        ("POST", "/calc", b"[" * MAX_BODY_BYTES),
        ("POST", "/calc", b"[1e999999999," * 1000 + b"1" + b"]" * 1000),
    ]
    started = time.perf_counter()
    for method, path, body in hostile:
        reply = call(method, path, body, content_type=JSON_TYPE)
        assert 400 <= reply.status < 500
    # Generous: the whole batch takes milliseconds; quadratic or big-int work would take seconds.
    assert time.perf_counter() - started < 2.0


# --- the fast path for the common /calc body --------------------------------------------------------

def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four: a body must be well-formed nearly everywhere to reach the fast path."""
    return st.one_of(usual, usual, usual, odd)


BODY_SPACES = st.lists(st.text(alphabet=" \t\n\r", max_size=2), min_size=14, max_size=14)
NOT_JSON_SPACE = mostly(st.none(), st.tuples(st.integers(0, 13), st.sampled_from(["\x0b", "\x0c", "\x1c", "\xa0"])))
BODY_OP = mostly(st.sampled_from(list(arithmetic.OPERATIONS)),
                 st.sampled_from(["Add", "mul", "mult ", "div\\u0000", "mu\\u006ct", ""]))
BODY_KEYS = mostly(st.just(("op", "arg1", "arg2")),
                   st.sampled_from([("op", "arg2", "arg1"), ("op", "arg1", "arg1"), ("o\\u0070", "arg1", "arg2")]))
ODD_NUMBERS = ["-0", "0.0", "-0.0", "2.50", "01", "-01", "00", "1.", ".5", "+1", "-", "1e", "1_0", "\u0661", "1" * 100,
               "1" * 101, "-" + "1" * 100, "0." + "0" * 98 + "1", "0." + "0" * 99 + "1", "1" * 99 + ".5", "NaN",
               "-Infinity", '"2"', "true", "null", "[1]", "1e2", "1E-2", "1" * 100 + "e0"]
BODY_NUMBER = mostly(
    st.from_regex(r"-?(?:0|[1-9][0-9]{0,30})(?:\.[0-9]{1,30})?", fullmatch=True),
    st.from_regex(r"-?(?:0|[1-9][0-9]{0,3})(?:\.[0-9]{1,3})?[eE][-+]?[0-9]{1,3}", fullmatch=True)
    | st.sampled_from(ODD_NUMBERS))


def fast_and_full_outcomes(text: str) -> tuple[Any, Any]:
    """What the /calc parser makes of a body, and what the full validating decoder alone makes of it."""
    def outcome(parse: Any, argument: Any) -> Any:
        try:
            op, first, second = parse(argument)
        except calc_request.Problem as problem:
            return problem.kind.slug, problem.detail, problem.extensions
        # The same values and the same text in the response, whatever types carry them.
        return op, first, second, arithmetic.to_plain(first), arithmetic.to_plain(second)

    return outcome(calc_request.parse_calc_request, text.encode()), outcome(calc_request.parse_document, text)


@pytest.mark.parametrize("number", ODD_NUMBERS)
def test_common_body_fast_path_agrees_on_odd_numbers(number: str) -> None:
    for text in (f'{{"op": "add", "arg1": {number}, "arg2": 1}}', f'{{"op":"div","arg1":1,"arg2":{number}}}'):
        fast, full = fast_and_full_outcomes(text)
        assert fast == full, text


def test_common_body_fast_path_agrees_on_every_one_character_damage() -> None:
    for body in ('{"op": "mult", "arg1": 2.5, "arg2": -40}', '{"op":"div","arg1":0,"arg2":1}'):
        for at in range(len(body)):
            for text in (body[:at] + body[at + 1:], body[:at] + body[at] + body[at:]):
                fast, full = fast_and_full_outcomes(text)
                assert fast == full, text


@settings(max_examples=500)
@given(spaces=BODY_SPACES, odd_space=NOT_JSON_SPACE, op=BODY_OP, keys=BODY_KEYS, a=BODY_NUMBER, b=BODY_NUMBER,
       cut=mostly(st.none(), st.integers(0, 1000)))
def test_common_body_fast_path_agrees_with_the_full_decoder(spaces: list[str], odd_space: tuple[int, str] | None,
                                                            op: str, keys: tuple[str, str, str], a: str, b: str,
                                                            cut: int | None) -> None:
    s = spaces
    if odd_space is not None:
        s[odd_space[0]] += odd_space[1]
    text = (f'{s[0]}{{{s[1]}"{keys[0]}"{s[2]}:{s[3]}"{op}"{s[4]},{s[5]}"{keys[1]}"{s[6]}:{s[7]}{a}{s[8]},'
            f'{s[9]}"{keys[2]}"{s[10]}:{s[11]}{b}{s[12]}}}{s[13]}')
    if cut is not None:  # drop one character: a quote, a colon, a brace, a digit...
        cut %= len(text)
        text = text[:cut] + text[cut + 1:]
    fast, full = fast_and_full_outcomes(text)
    assert fast == full


# --- whole numbers computed as ints ---------------------------------------------------------------

WHOLE_NUMBERS = st.integers(min_value=0, max_value=10 ** 100) | st.sampled_from([0, 1, 10 ** 99, 10 ** 100 - 1])


@settings(max_examples=300)
@given(op=st.sampled_from(list(arithmetic.OPERATIONS)), a=WHOLE_NUMBERS, b=WHOLE_NUMBERS,
       sign_a=st.sampled_from(["", "-"]), sign_b=st.sampled_from(["", "-"]))
def test_whole_numbers_give_the_same_responses_as_their_decimal_spelling(op: str, a: int, b: int, sign_a: str,
                                                                         sign_b: str) -> None:
    # "7" takes the int path where it applies; "7.0" is the same value through Decimal all the way.
    # The path has no signs for the int path to see, JSON has; 10**100 is out of range either way.
    def same(whole: Reply, spelled: Reply) -> None:
        assert whole.status == spelled.status
        if whole.status == 200:
            assert whole.body == spelled.body
        else:  # a problem's detail quotes the path as written
            assert json.loads(whole.body)["type"] == json.loads(spelled.body)["type"]

    same(call("GET", f"/{op}/{a}/{b}"), call("GET", f"/{op}/{a}.0/{b}.0"))
    same(calc_raw(f'{{"op": "{op}", "arg1": {sign_a}{a}, "arg2": {sign_b}{b}}}'.encode()),
         calc_raw(f'{{"op": "{op}", "arg1": {sign_a}{a}.0, "arg2": {sign_b}{b}.0}}'.encode()))


@settings(max_examples=500)
@given(text=st.text(alphabet="0123456789.+-eE\u0663\u00b2 ", max_size=8)
       | st.sampled_from(["1" * 100, "1" * 101, "." + "1" * 99, "." + "1" * 100, "1" * 99 + ".", "0" * 100 + ".5"]))
def test_path_operand_shortcut_agrees_with_the_number_grammar(text: str) -> None:
    # parse_operand answers plain digits with at most one point without its regex; the result must
    # be what the grammar and the bound check make of the same text.
    def outcome(parse: Any) -> Any:
        try:
            return str(parse(text))  # str(): the exact coefficient and exponent, not just the value
        except arithmetic.OperandError as error:
            return type(error), error.reason

    def by_the_grammar(text: str) -> Decimal:
        if re.fullmatch(arithmetic.NUMBER_PATTERN, text):
            return arithmetic.bounded_decimal(text)
        raise arithmetic.NotANumber("is empty" if not text else "is not a decimal number")

    assert outcome(arithmetic.parse_operand) == outcome(by_the_grammar)

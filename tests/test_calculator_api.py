"""API tests: the calculator over the real server (``python3 -m server``) with a real HTTP client.

These check the contract as a client sees it, through the server's parsing, percent-decoding,
body handling and framing; the app's own corner cases live in test_calculator_app.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from harness import ServerProcess

pytestmark = pytest.mark.usefixtures("calc_server")

PROBLEM_FIELDS = {"type", "title", "status", "detail", "instance"}


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture
def url(calc_server: ServerProcess) -> Any:
    return lambda path: calc_server.url + path


def exact_json(response: requests.Response) -> Any:
    """The body with numbers as Decimal, so a test sees the exact number text the server sent."""
    return json.loads(response.content, parse_float=Decimal, parse_int=Decimal)


def check_problem(response: requests.Response, slug: str, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["Content-Length"] == str(len(response.content))
    problem = response.json()
    assert problem.keys() >= PROBLEM_FIELDS
    assert problem["type"] == f"/problems/{slug}"
    assert problem["status"] == status
    assert problem["detail"]
    return problem


@pytest.mark.parametrize(("path", "expected"), [
    ("/add/2/3", "5"),
    ("/sub/2/3", "-1"),
    ("/mult/2/4", "8"),
    ("/div/8/2", "4"),
    ("/add/-1.5/2", "0.5"),
    ("/add/0.1/0.2", "0.3"),
    ("/mult/2.5/4", "10"),
    ("/div/1/4", "0.25"),
    ("/div/10/4", "2.5"),
    ("/div/2/3", "0." + "6" * 99 + "7"),
    ("/mult/123456789012345678901234567890/10", "1234567890123456789012345678900"),
    ("/add/1e3/1", "1001"),
    ("/add/%2D1.5/2", "0.5"),  # percent-encoded operands arrive decoded
])
def test_path_operations(http: requests.Session, url: Any, path: str, expected: str) -> None:
    response = http.get(url(path))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert response.headers["Content-Length"] == str(len(expected))
    assert response.text == expected


@pytest.mark.parametrize(("document", "expected"), [
    ({"op": "add", "arg1": 2, "arg2": 3}, "5"),
    ({"op": "sub", "arg1": 2, "arg2": 3}, "-1"),
    ({"op": "mult", "arg1": 2, "arg2": 4}, "8"),
    ({"op": "div", "arg1": 1, "arg2": 8}, "0.125"),
])
def test_calc_operations(http: requests.Session, url: Any, document: dict[str, Any], expected: str) -> None:
    response = http.post(url("/calc"), json=document)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = exact_json(response)
    assert body["result"] == Decimal(expected)
    assert (body["op"], body["arg1"], body["arg2"]) == (document["op"], document["arg1"], document["arg2"])


def test_calc_is_exact_not_float(http: requests.Session, url: Any) -> None:
    # Sent as raw text: a client's float serialisation must not get in the way either.
    response = http.post(url("/calc"), data=b'{"op": "add", "arg1": 0.1, "arg2": 0.2}',
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert response.text.endswith('"result":0.3}')
    assert http.get(url("/sub/0.3/0.1")).text == "0.2"
    big = http.post(url("/calc"), data=b'{"op": "add", "arg1": 9007199254740993, "arg2": 0}',
                    headers={"Content-Type": "application/json; charset=utf-8"})
    assert exact_json(big)["result"] == Decimal("9007199254740993")


def test_chunked_request_body(http: requests.Session, url: Any) -> None:
    # A generator makes requests send Transfer-Encoding: chunked; the server decodes it for the app.
    pieces = [b'{"op": "mult", ', b'"arg1": 1.5, ', b'"arg2": 4}']
    response = http.post(url("/calc"), data=iter(pieces), headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert exact_json(response)["result"] == Decimal(6)


ERRORS = [
    ("GET", "/div/1/0", {}, "division-by-zero", 422),
    ("GET", "/add/abc/2", {}, "invalid-number", 400),
    ("GET", "/add/%FF/2", {}, "invalid-number", 400),
    ("GET", "/add/NaN/2", {}, "non-finite-number", 400),
    ("GET", "/add/Infinity/2", {}, "non-finite-number", 400),
    ("GET", "/add/1e999999999/2", {}, "operand-out-of-range", 422),
    ("GET", "/add/" + "9" * 5000 + "/2", {}, "operand-out-of-range", 422),
    ("GET", "/add/2", {}, "operand-count", 404),
    ("GET", "/add/2/3/4", {}, "operand-count", 404),
    ("GET", "/add/1%2F2/3", {}, "operand-count", 404),  # an encoded slash still separates segments
    ("GET", "/nothing/here", {}, "not-found", 404),
    ("POST", "/calc", {"json": {"op": "div", "arg1": 1, "arg2": 0}}, "division-by-zero", 422),
    ("POST", "/calc", {"json": {"op": "add", "arg1": "2", "arg2": 3}}, "wrong-type", 400),
    ("POST", "/calc", {"json": {"op": "add", "arg1": True, "arg2": 3}}, "wrong-type", 400),
    ("POST", "/calc", {"json": {"op": "add", "arg1": None, "arg2": 3}}, "wrong-type", 400),
    ("POST", "/calc", {"json": {"op": "add", "arg1": 1}}, "missing-field", 400),
    ("POST", "/calc", {"json": {"op": "add", "arg1": 1, "arg2": 2, "arg3": 3}}, "unknown-field", 400),
    ("POST", "/calc", {"json": {"op": "pow", "arg1": 1, "arg2": 2}}, "unknown-operation", 400),
    ("POST", "/calc", {"json": [1, 2]}, "not-an-object", 400),
    ("POST", "/calc", {"json": 3}, "not-an-object", 400),
    ("POST", "/calc", {"data": b'{"op": "add", "arg1": NaN, "arg2": 1}'}, "non-finite-number", 400),
    ("POST", "/calc", {"data": b'{"op": "add", "arg1": Infinity, "arg2": 1}'}, "non-finite-number", 400),
    ("POST", "/calc", {"data": b'{"op": "add", "arg1": 1e999999999, "arg2": 1}'}, "operand-out-of-range", 422),
    ("POST", "/calc", {"data": b'{"op": "add", "arg1": ' + b"1" * 12_000 + b', "arg2": 1}'},
     "operand-out-of-range", 422),
    ("POST", "/calc", {"data": b'{"op": "add", "op": "sub", "arg1": 1, "arg2": 1}'}, "duplicate-key", 400),
    ("POST", "/calc", {"data": b'{"op": "add", "arg1": 1'}, "malformed-json", 400),
    ("POST", "/calc", {"data": b'{"op": "\xe9"}'}, "invalid-utf8", 400),
    ("POST", "/calc", {"data": b"[" * 10_000}, "nesting-too-deep", 400),
    ("POST", "/calc", {"data": b""}, "empty-body", 400),
    ("POST", "/calc", {"data": b" " * (16 * 1024 + 1)}, "body-too-large", 413),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "slug", "status"), ERRORS,
                         ids=[f"{case[3]}:{case[1][:30]}" for case in ERRORS])
def test_problems(http: requests.Session, url: Any, method: str, path: str, kwargs: dict[str, Any],
                  slug: str, status: int) -> None:
    if "data" in kwargs:
        kwargs = {**kwargs, "headers": {"Content-Type": "application/json"}}
    problem = check_problem(http.request(method, url(path), **kwargs), slug, status)
    if "%2F" not in path:  # a decoded slash cannot be told apart from a real one
        assert problem["instance"] == path


def test_problem_names_the_operand_and_the_received_text(http: requests.Session, url: Any) -> None:
    problem = check_problem(http.get(url("/mult/3/three")), "invalid-number", 400)
    assert problem["parameter"] == "arg2" and problem["received"] == "three"
    assert "arg2" in problem["detail"] and "three" in problem["detail"]
    problem = check_problem(http.get(url("/add/%E2%82%AC/1")), "invalid-number", 400)
    assert problem["received"] == "€"  # shown as the client wrote it, not as latin-1 mojibake


def test_malformed_json_says_where(http: requests.Session, url: Any) -> None:
    response = http.post(url("/calc"), data=b'{"op": "add",\n "arg1" 1}', headers={"Content-Type": "application/json"})
    problem = check_problem(response, "malformed-json", 400)
    assert (problem["line"], problem["column"]) == (2, 9)


def test_unknown_operation_lists_valid_ones(http: requests.Session, url: Any) -> None:
    problem = check_problem(http.post(url("/calc"), json={"op": "mod", "arg1": 1, "arg2": 2}),
                            "unknown-operation", 400)
    assert problem["allowed"] == ["add", "sub", "mult", "div"]


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("POST", "/add/2/3", "GET, HEAD"),
    ("PUT", "/div/2/3", "GET, HEAD"),
    ("DELETE", "/healthz", "GET, HEAD"),
    ("POST", "/openapi.json", "GET, HEAD"),
    ("GET", "/calc", "POST"),
    ("PATCH", "/calc", "POST"),
])
def test_method_not_allowed(http: requests.Session, url: Any, method: str, path: str, allow: str) -> None:
    response = http.request(method, url(path))
    check_problem(response, "method-not-allowed", 405)
    assert response.headers["Allow"] == allow


@pytest.mark.parametrize("headers", [
    {},  # no Content-Type at all
    {"Content-Type": "text/plain"},
    {"Content-Type": "application/x-www-form-urlencoded"},
    {"Content-Type": "application/json; charset=iso-8859-1"},
])
def test_unsupported_media_type(http: requests.Session, url: Any, headers: dict[str, str]) -> None:
    response = http.post(url("/calc"), data=b'{"op": "add", "arg1": 1, "arg2": 2}', headers=headers)
    check_problem(response, "unsupported-media-type", 415)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=UTF-8",
                                          "application/problem+json", "application/vnd.example+json"])
def test_json_media_types_accepted(http: requests.Session, url: Any, content_type: str) -> None:
    response = http.post(url("/calc"), data=b'{"op": "add", "arg1": 1, "arg2": 2}',
                         headers={"Content-Type": content_type})
    assert response.status_code == 200


def test_chunked_body_over_the_limit_is_413(http: requests.Session, url: Any) -> None:
    pieces = iter([b" " * 8192] * 3)
    response = http.post(url("/calc"), data=pieces, headers={"Content-Type": "application/json"})
    check_problem(response, "body-too-large", 413)


def test_head_has_get_headers_and_no_body(http: requests.Session, url: Any) -> None:
    for path in ("/add/2/3", "/div/1/3", "/healthz", "/openapi.json"):
        get = http.get(url(path))
        head = http.head(url(path))
        assert head.status_code == get.status_code == 200
        assert head.content == b""
        assert head.headers["Content-Length"] == get.headers["Content-Length"] == str(len(get.content))
        assert head.headers["Content-Type"] == get.headers["Content-Type"]


def test_head_of_an_error_keeps_its_length(http: requests.Session, url: Any) -> None:
    get, head = http.get(url("/div/1/0")), http.head(url("/div/1/0"))
    assert head.status_code == get.status_code == 422
    assert head.content == b"" and head.headers["Content-Length"] == get.headers["Content-Length"]


def test_healthz(http: requests.Session, url: Any) -> None:
    response = http.get(url("/healthz"))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_openapi_document(http: requests.Session, url: Any) -> None:
    response = http.get(url("/openapi.json"))
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1.")
    for path in ("/add/{arg1}/{arg2}", "/sub/{arg1}/{arg2}", "/mult/{arg1}/{arg2}", "/div/{arg1}/{arg2}",
                 "/calc", "/healthz", "/openapi.json"):
        assert path in document["paths"]
    assert document["paths"]["/calc"]["post"]["responses"]["415"]["content"]["application/problem+json"]


def test_problem_types_dereference(http: requests.Session, url: Any) -> None:
    problem = check_problem(http.get(url("/div/1/0")), "division-by-zero", 422)
    page = http.get(urljoin(url("/div/1/0"), problem["type"]))
    assert page.status_code == 200
    assert "Division by zero" in page.text


def test_many_requests_on_one_connection(http: requests.Session, url: Any) -> None:
    # Keep-alive through every response kind, including errors that leave no unread body.
    for number in range(1, 30):
        assert http.get(url(f"/mult/{number}/{number}")).text == str(number * number)
        check_problem(http.get(url(f"/div/{number}/0")), "division-by-zero", 422)
        response = http.post(url("/calc"), json={"op": "sub", "arg1": number, "arg2": 0.5})
        assert exact_json(response)["result"] == Decimal(number) - Decimal("0.5")

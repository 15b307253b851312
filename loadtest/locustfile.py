"""Locust scenarios for the calculator service.

Three kinds of simulated users, each checking every answer rather than only the status:

* ``PathUser``  (tag ``add``)    - ``GET /add|sub|mult|div/<a>/<b>`` with random decimal operands;
* ``CalcUser``  (tag ``calc``)   - ``POST /calc`` with a random op and random operands as JSON;
* ``BadInputUser`` (tag ``errors``) - bad requests whose expected 4xx ``application/problem+json``
  answer counts as a success (and anything else, a 200 included, as a failure).

The expected numbers are computed here with :mod:`decimal`, independently of the service.
Pick scenarios with ``--tags add`` / ``--tags calc errors`` or by class name
(``locust ... PathUser``). A stepped ramp is opt-in: ``--step-shape`` (see ``--help``).
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Context, Decimal

from locust import FastHttpUser, LoadTestShape, events, tag, task

PATH_OPS = ("add", "sub", "mult", "div")
CALC_OPS = PATH_OPS

# Quotients are rounded to this many significant digits, half to even, as documented in
# server/calculator/arithmetic.py (DIVISION_PRECISION); add, sub and mult are exact.
DIVISION_PRECISION = 100

# A plain decimal with no exponent, no leading zeros, no trailing fractional zeros and no "-0".
NUMBER_TEXT = re.compile(r"(?!-0\Z)-?(?:0|[1-9][0-9]*)(?:\.[0-9]*[1-9])?")
EXACT = Context(prec=400, rounding=ROUND_HALF_EVEN, traps=[])
DIVIDE = Context(prec=DIVISION_PRECISION, rounding=ROUND_HALF_EVEN, traps=[])

logger = logging.getLogger("loadtest")


# --- expected values --------------------------------------------------------------------------------


def random_operand(rng: random.Random, *, nonzero: bool = False) -> str:
    """A decimal literal such as ``-1234.5``, ``7``, ``0.0625`` or now and then ``25e-3``."""
    while True:
        digits = rng.choice((1, 2, 3, 4, 6, 9))
        scale = rng.choice((0, 0, 1, 2, 3, 4))
        value = Decimal(rng.randrange(10**digits)).scaleb(-scale)
        if value and rng.random() < 0.3:
            value = -value
        if nonzero and value == 0:
            continue
        if rng.random() < 0.05:  # exponent notation, valid in a path and as a JSON number
            sign, coefficient, exponent = value.as_tuple()
            return f"{'-' if sign else ''}{''.join(map(str, coefficient))}e{exponent}"
        return format(value, "f")


def expected_result(op: str, a: Decimal, b: Decimal) -> Decimal:
    """The right answer: exact for add/sub/mult, the quotient rounded as the service documents for div."""
    if op == "add":
        return EXACT.add(a, b)
    if op == "sub":
        return EXACT.subtract(a, b)
    if op == "mult":
        return EXACT.multiply(a, b)
    if op == "div":
        return DIVIDE.divide(a, b)
    raise ValueError(f"unknown op {op!r}")


def check_number(op: str, a: Decimal, b: Decimal, got: Decimal) -> str | None:
    """None when ``got`` is the right answer to ``a op b``, else why not."""
    expected = expected_result(op, a, b)
    if got == expected:
        return None
    return f"{a} {op} {b}: expected {format(expected, 'f')}, got {format(got, 'f')}"


def check_text_result(op: str, a: str, b: str, body: bytes) -> str | None:
    """Check a text/plain answer of ``GET /op/a/b``."""
    text = body.decode("utf-8", "replace").strip()
    if not NUMBER_TEXT.fullmatch(text):
        return f"/{op}/{a}/{b}: body {text[:60]!r} is not a plain decimal number"
    return check_number(op, Decimal(a), Decimal(b), Decimal(text))


def check_json_result(op: str, a: str, b: str, body: bytes) -> str | None:
    """Check the JSON answer of ``POST /calc``: an object whose ``result`` is a JSON number."""
    try:
        doc = json.loads(body, parse_float=Decimal)
    except ValueError:
        return f"/calc {op} {a} {b}: body is not JSON: {body[:80]!r}"
    if not isinstance(doc, dict) or "result" not in doc:
        return f"/calc {op} {a} {b}: no 'result' member in {body[:80]!r}"
    result = doc["result"]
    if isinstance(result, bool) or not isinstance(result, int | Decimal):
        return f"/calc {op} {a} {b}: result {result!r} is not a JSON number"
    return check_number(op, Decimal(a), Decimal(b), Decimal(result))


def media_type(headers) -> str:
    value = (headers.get("content-type") if headers is not None else None) or ""
    return value.split(";", 1)[0].strip().lower()


def check_problem(resp, allowed: frozenset[int]) -> str | None:
    """None when ``resp`` is an RFC 9457 problem document with one of the ``allowed`` statuses."""
    if resp.status_code not in allowed:
        return f"status {resp.status_code}, expected one of {sorted(allowed)}; body {(resp.content or b'')[:80]!r}"
    ctype = media_type(resp.headers)
    if ctype != "application/problem+json":
        return f"content type {ctype!r}, expected application/problem+json"
    try:
        doc = json.loads(resp.content or b"")
    except ValueError:
        return f"problem body is not JSON: {(resp.content or b'')[:80]!r}"
    if not isinstance(doc, dict):
        return "problem body is not a JSON object"
    for member in ("type", "title", "detail"):
        if not isinstance(doc.get(member), str) or not doc[member]:
            return f"problem member {member!r} missing or not a string: {doc!r}"
    if doc.get("status") != resp.status_code:
        return f"problem status {doc.get('status')!r} differs from the HTTP status {resp.status_code}"
    if resp.status_code == 405 and not (resp.headers.get("allow") or "").strip():
        return "405 without an Allow header"
    return None


# --- users ------------------------------------------------------------------------------------------


def think_time(user) -> float:
    """Random pause between tasks, 0..--think-time seconds (0 means no pause)."""
    options = user.environment.parsed_options
    limit = getattr(options, "think_time", 0.5) if options is not None else 0.5
    return user.rng.uniform(0, limit) if limit > 0 else 0


class CalculatorUser(FastHttpUser):
    abstract = True
    wait_time = think_time

    def __init__(self, environment) -> None:
        super().__init__(environment)
        self.rng = random.Random()

    def expect_ok(self, resp, media: str, check: Callable[[bytes], str | None]) -> None:
        if resp.status_code != 200:
            resp.failure(f"status {resp.status_code}: {(resp.content or b'')[:100]!r}")
            return
        if media_type(resp.headers) != media:
            resp.failure(f"content type {resp.headers.get('content-type')!r}, expected {media}")
            return
        problem = check(resp.content or b"")
        if problem:
            resp.failure(problem)
        else:
            resp.success()


class PathUser(CalculatorUser):
    """``GET /<op>/<a>/<b>`` for the four operations, answer checked against Decimal."""

    weight = 3

    def path_op(self, op: str) -> None:
        a = random_operand(self.rng)
        b = random_operand(self.rng, nonzero=op == "div")
        with self.client.get(f"/{op}/{a}/{b}", name=f"/{op}/[a]/[b]", catch_response=True) as resp:
            self.expect_ok(resp, "text/plain", lambda body: check_text_result(op, a, b, body))

    @tag("add", "path")
    @task(4)
    def add(self) -> None:
        self.path_op("add")

    @tag("add", "path")
    @task(2)
    def sub(self) -> None:
        self.path_op("sub")

    @tag("add", "path")
    @task(2)
    def mult(self) -> None:
        self.path_op("mult")

    @tag("add", "path")
    @task(2)
    def div(self) -> None:
        self.path_op("div")


class CalcUser(CalculatorUser):
    """``POST /calc`` with a JSON body; operands sent as exact JSON numbers."""

    weight = 3

    @tag("calc")
    @task
    def calc(self) -> None:
        op = self.rng.choice(CALC_OPS)
        a = random_operand(self.rng)
        b = random_operand(self.rng, nonzero=op == "div")
        body = f'{{"op": "{op}", "arg1": {a}, "arg2": {b}}}'
        with self.client.post("/calc", data=body, headers={"Content-Type": "application/json"},
                              name="/calc", catch_response=True) as resp:
            self.expect_ok(resp, "application/json", lambda raw: check_json_result(op, a, b, raw))


CLIENT_ERRORS = frozenset({400, 422})

# name -> (method, path, content type or None, body or None, accepted statuses)
BAD_REQUESTS: dict[str, tuple[str, str, str | None, str | None, frozenset[int]]] = {
    "[bad] /div/[a]/0": ("GET", "/div/{a}/0", None, None, CLIENT_ERRORS),
    "[bad] /add/[word]/[b]": ("GET", "/add/{word}/{b}", None, None, CLIENT_ERRORS),
    "[bad] /pow/[a]/[b]": ("GET", "/pow/{a}/{b}", None, None, CLIENT_ERRORS | {404}),
    "[bad] /[unknown path]": ("GET", "/no/such/{word}", None, None, frozenset({404})),
    "[bad] POST /add/[a]/[b]": ("POST", "/add/{a}/{b}", "text/plain", "x", frozenset({405})),
    "[bad] GET /calc": ("GET", "/calc", None, None, frozenset({405})),
    "[bad] /calc text/plain": ("POST", "/calc", "text/plain", '{{"op": "add", "arg1": {a}, "arg2": {b}}}',
                               frozenset({415})),
    "[bad] /calc malformed JSON": ("POST", "/calc", "application/json", '{{"op": "add", "arg1": {a},',
                                   frozenset({400})),
    "[bad] /calc unknown op": ("POST", "/calc", "application/json", '{{"op": "{word}", "arg1": {a}, "arg2": {b}}}',
                               CLIENT_ERRORS),
    "[bad] /calc non-numeric": ("POST", "/calc", "application/json", '{{"op": "add", "arg1": "{word}", "arg2": {b}}}',
                                CLIENT_ERRORS),
    "[bad] /calc division by zero": ("POST", "/calc", "application/json", '{{"op": "div", "arg1": {a}, "arg2": 0}}',
                                     CLIENT_ERRORS),
}


class BadInputUser(CalculatorUser):
    """Sends bad input; the expected 4xx problem+json answer is a success, anything else a failure."""

    weight = 1

    @tag("errors")
    @task
    def bad_request(self) -> None:
        name = self.rng.choice(list(BAD_REQUESTS))
        method, path, ctype, body, allowed = BAD_REQUESTS[name]
        values = {"a": random_operand(self.rng), "b": random_operand(self.rng),
                  "word": self.rng.choice(("abc", "pow", "x1", "nan-ish", "one"))}
        headers = {"Content-Type": ctype} if ctype else {}
        data = body.format(**values) if body is not None else None
        with self.client.request(method, path.format(**values), name=name, data=data, headers=headers,
                                 catch_response=True) as resp:
            problem = check_problem(resp, allowed)
            if problem:
                resp.failure(problem)
            else:
                resp.success()


# --- opt-in stepped ramp ----------------------------------------------------------------------------


class StepRampShape(LoadTestShape):
    """Add --step-users users every --step-seconds, --steps times, then stop.

    ``abstract = True`` keeps locust from picking it up automatically; ``--step-shape`` turns it on.
    """

    abstract = True

    def option(self, name: str, default):
        options = self.runner.environment.parsed_options if self.runner is not None else None
        return getattr(options, name, default) if options is not None else default

    def tick(self) -> tuple[int, float] | None:
        users = self.option("step_users", 10)
        seconds = self.option("step_seconds", 10.0)
        steps = self.option("steps", 5)
        step = int(self.get_run_time() // seconds)
        if step >= steps:
            return None
        return (step + 1) * users, float(users)


@events.init_command_line_parser.add_listener
def add_arguments(parser) -> None:
    parser.add_argument("--think-time", type=float, default=0.5, env_var="LOCUST_THINK_TIME",
                       help="Longest random pause between a user's requests, seconds (0: none). Default 0.5")
    parser.add_argument("--step-shape", action="store_true", default=False, env_var="LOCUST_STEP_SHAPE",
                       include_in_web_ui=False,
                       help="Use the stepped ramp (ignores -u/-r): --step-users more every --step-seconds")
    parser.add_argument("--step-users", type=int, default=10, env_var="LOCUST_STEP_USERS",
                       help="Users added at each step of --step-shape. Default 10")
    parser.add_argument("--step-seconds", type=float, default=10.0, env_var="LOCUST_STEP_SECONDS",
                       help="Seconds each step of --step-shape lasts. Default 10")
    parser.add_argument("--steps", type=int, default=5, env_var="LOCUST_STEPS",
                       help="Number of steps of --step-shape before the run ends. Default 5")


@events.init.add_listener
def choose_shape(environment, runner=None, **_kwargs) -> None:
    options = environment.parsed_options
    if options is not None and getattr(options, "step_shape", False) and not getattr(options, "worker", False):
        shape = StepRampShape()
        shape.runner = runner
        environment.shape_class = shape
        logger.info("stepped ramp: +%s users every %ss, %s steps", options.step_users, options.step_seconds,
                    options.steps)


@events.test_start.add_listener
def drop_users_without_tasks(environment, **_kwargs) -> None:
    """After --tags/--exclude-tags filtering, a user class left without tasks would crash on spawn."""
    kept = [user for user in environment.user_classes if user.tasks]
    if kept and len(kept) != len(environment.user_classes):
        dropped = sorted({u.__name__ for u in environment.user_classes} - {u.__name__ for u in kept})
        logger.info("no tasks left after tag filtering, not spawning: %s", ", ".join(dropped))
        environment.user_classes[:] = kept

"""The API against its own OpenAPI document, judged by schemathesis (an outside tool, not our expectations).

schemathesis reads /openapi.json from the running server, generates valid and
invalid requests for every operation and runs all its checks on the answers:
no server error, every status, content type, header and body as documented,
valid data accepted, invalid data rejected, Allow headers, unsupported methods.
A fixed seed and a bounded number of examples keep the run reproducible and
under a minute; any finding fails the test with schemathesis' own report.
There is no configuration file and no allowance: the document states the operands' bounds, so
every request it allows is one the server accepts.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from harness import fetch, get


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_all_checks(server_factory, tmp_path):
    server = server_factory("--no-access-log")
    # One worker: schemathesis 4.32 with several workers can trip over a CPython 3.11 ast race while
    # building its strategies (SystemError "AST constructor recursion depth mismatch").
    command = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()",
               "run", f"{server.url}/openapi.json", "--checks", "all",
               "--seed", "1", "--max-examples", "50", "--workers", "1", "--generation-database", "none",
               "--no-color", "--report", "junit", "--report-dir", str(tmp_path)]
    # Run from a scratch directory: schemathesis keeps a .schemathesis/ cache where it runs.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-8000:]
    assert "No issues found" in report and " passed" in report, report[-3000:]


def test_server_answers_carry_documented_problem_types(calc_server):
    """What schemathesis saw as a 414 with type about:blank: now a type the document lists, with its page."""
    document = json.loads(fetch(calc_server.url, "/openapi.json")[2])
    types = set(document["components"]["schemas"]["Problem"]["properties"]["type"]["enum"])
    client = calc_server.connect()
    try:
        status, _, body = client.request(get("/add/" + "1" * 9000 + "/1"))
    finally:
        client.close()
    problem = json.loads(body)
    assert status == 414 and problem["type"] in types and problem["type"] != "about:blank"
    operation = document["paths"]["/add/{arg1}/{arg2}"]["get"]["responses"]
    assert {"400", "408", "413", "414", "417", "431", "501", "503", "505"} <= set(operation)
    page_status, _, page = fetch(calc_server.url, problem["type"])
    assert page_status == 200 and page.decode().splitlines()[0] == problem["title"]

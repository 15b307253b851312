"""The interpreter a server runs on, reported from inside a request it answers.

On the free-threaded lane of the test matrix (a CPython built with --disable-gil, run with
PYTHON_GIL=0; scripts/test, scripts/lib/matrix.sh) the answer must say the GIL is off: that is
what makes the rest of that lane's results mean "tested without the GIL". And the server needs
nothing that would switch it back on: an extension module that does not declare it can run
without the GIL turns it on at import unless PYTHON_GIL=0 forbids it, so the server is started
once without that setting too.
"""

from __future__ import annotations

import json
import os
import sys
import sysconfig

import pytest
from harness import fetch

FREE_THREADED_BUILD = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
LANE = os.environ.get("CALC_TEST_LANE", "")  # set by scripts/matrix-test


def interpreter_of(server) -> dict:
    status, _, body = fetch(server.url, "/")
    assert status == 200
    return json.loads(body)


def test_the_answer_names_the_interpreter_and_its_gil(server_factory):
    server = server_factory("--app", "interpreter_app:app", "--threads", "4", "--no-access-log")
    info = interpreter_of(server)
    assert info["version"] == sys.version  # the server runs under the interpreter the tests run under
    assert info["free_threaded_build"] == FREE_THREADED_BUILD
    assert not info["main_thread"], "requests run on the worker threads"
    if not FREE_THREADED_BUILD:
        assert info["gil_enabled"] is True
    elif os.environ.get("PYTHON_GIL") == "0":
        assert info["gil_enabled"] is False


@pytest.mark.skipif(not LANE.endswith("t"), reason="only the free-threaded lane (python3.13t) runs without the GIL")
def test_free_threaded_lane_serves_with_the_gil_off(server_factory):
    """The lane is what it says: a free-threaded build, PYTHON_GIL=0, and the GIL off in the request."""
    assert FREE_THREADED_BUILD, f"{LANE} runs {sys.version}, which is not a free-threaded build"
    assert os.environ.get("PYTHON_GIL") == "0"
    server = server_factory("--app", "interpreter_app:app", "--threads", "4", "--no-access-log")
    assert interpreter_of(server)["gil_enabled"] is False


@pytest.mark.skipif(not FREE_THREADED_BUILD, reason="needs a free-threaded build (--disable-gil)")
def test_nothing_the_server_imports_turns_the_gil_back_on(server_factory):
    """Without PYTHON_GIL (empty counts as unset), the GIL stays off with the server and the calculator loaded,
    and the server prints no warning that a module enabled it."""
    server = server_factory("--app", "interpreter_app:app", "--threads", "4", "--no-access-log",
                            env={"PYTHON_GIL": "", "PYTHONWARNINGS": "default"})
    status, _, body = fetch(server.url, "/")
    assert status == 200 and json.loads(body)["gil_enabled"] is False
    calculator = server_factory("--threads", "4", "--no-access-log", env={"PYTHON_GIL": ""})
    assert fetch(calculator.url, "/add/2/3")[2].strip() == b"5"
    assert "GIL" not in server.output() + calculator.output()

"""The command line and environment: one table of settings, every entry reachable both ways."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys

import pytest
import requests
from harness import ROOT

from server import config


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def test_help_explains_every_option_and_its_environment_variable():
    result = run_cli("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for option in config.OPTIONS:
        assert option.flag in text and option.env in text, option.name
        if option.is_switch:
            assert option.negative_flag in text, option.name


def test_every_yes_no_option_has_both_forms_and_a_flag_beats_the_environment():
    """Any option whose default is a bool is a switch, including ones added later: --x and --no-x."""
    switches = [option for option in config.OPTIONS if option.is_switch]
    assert switches
    for option in switches:
        off = {option.env: "false"}
        assert getattr(config.load([option.flag], off), option.name) is True, option.flag
        assert getattr(config.load([option.negative_flag], {option.env: "true"}), option.name) is False
        assert getattr(config.load([], off), option.name) is False


def test_access_log_help_says_what_each_form_does():
    result = run_cli("--help")
    help_text = " ".join(result.stdout.split())
    entry = help_text[help_text.index("--access-log, --no-access-log"):]
    entry = entry[:entry.index("]") + 1]
    assert "Write one access-log line per request" in entry and "--no-access-log writes none" in entry.replace(
        "- ", "-")


def test_access_log_flag_turns_the_log_back_on_over_the_environment(server_factory):
    server = server_factory("--access-log", env={"CALC_ACCESS_LOG": "false"})
    assert requests.get(f"{server.url}/add/2/3", timeout=5).text == "5"
    server.wait_for_line(r'"GET /add/2/3 HTTP/1.1" 200')


def test_environment_sets_options_and_flags_win():
    settings = config.load([], {"CALC_THREADS": "3", "CALC_PORT": "9001", "CALC_ACCESS_LOG": "false",
                                "CALC_FORWARDED_ALLOW_IPS": "10.0.0.0/8, 192.0.2.1"})
    assert (settings.threads, settings.port, settings.access_log) == (3, 9001, False)
    assert settings.forwarded_allow_ips == ("10.0.0.0/8", "192.0.2.1")
    assert config.load(["--threads", "5"], {"CALC_THREADS": "3"}).threads == 5
    assert config.load([], {}) == config.Settings()


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--threads", "0"], {}, "--threads: '0': must be at least 1"),
    (["--port", "70000"], {}, "--port: '70000': port must be 0..65535"),
    (["--backlog", "99999999999"], {}, "--backlog: '99999999999': must be at most 2147483647"),  # listen(2): C int
    # A typo must not become a fork storm or a list of seats that eats memory before the first thread.
    (["--workers", "99999999"], {}, "--workers: '99999999': must be at most 1024"),
    ([], {"CALC_WORKERS": "5000"}, "CALC_WORKERS='5000': must be at most 1024"),
    (["--threads", "99999999999"], {}, "--threads: '99999999999': must be at most 4096"),
    (["--server-header", "a\r\nX-Injected: 1"], {}, "--server-header: 'a\\r\\nX-Injected: 1': must be printable ASCII"),
    ([], {"CALC_SERVER_HEADER": "a\nb"}, "CALC_SERVER_HEADER"),
    ([], {"CALC_WORKERS": "many"}, "CALC_WORKERS"),
    ([], {"CALC_ACCESS_LOG": "perhaps"}, "CALC_ACCESS_LOG"),
    ([], {"CALC_FORWARDED_ALLOW_IPS": "not-an-ip"}, "CALC_FORWARDED_ALLOW_IPS"),
    (["--threads", "many"], {}, "argument --threads: 'many': expected a whole number"),
    (["--port", "http"], {}, "argument --port: 'http': expected a whole number"),
    (["--keepalive-timeout", "soon"], {}, "argument --keepalive-timeout: 'soon': expected a number of seconds"),
    ([], {"CALC_MAX_BODY_SIZE": "1MB"}, "CALC_MAX_BODY_SIZE='1MB': expected a whole number"),
    ([], {"CALC_GRACEFUL_TIMEOUT": "30s"}, "CALC_GRACEFUL_TIMEOUT='30s': expected a number of seconds"),
    # A timeout poll(2) cannot take would fail every slow send with OverflowError (a 500 and a traceback).
    (["--send-timeout", "1e7"], {}, "--send-timeout: '1e7': must be at most 1000000 seconds"),
    (["--keepalive-timeout", "inf"], {}, "--keepalive-timeout: 'inf': must be at most 1000000 seconds"),
    (["--header-timeout", "nan"], {}, "--header-timeout: 'nan': must be a positive number of seconds"),
    ([], {"CALC_DRAIN_DELAY": "nan"}, "CALC_DRAIN_DELAY='nan': must be 0 or a positive number of seconds"),
    ([], {"CALC_ACCESS_LOG": "perhaps"}, "CALC_ACCESS_LOG='perhaps': expected true or false"),
])
def test_bad_settings_are_refused_with_a_clear_message(args, env, message):
    result = run_cli(*args, env=env)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and "invalid literal" not in result.stderr


def test_a_bare_int_or_float_parser_still_explains_what_is_expected():
    """Settings added later may parse with int or float directly; their errors must still be readable."""
    for parse, expected in [(int, "expected a whole number"), (float, "expected a number")]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^'x': {expected}$"):
            config._flag_parser(parse)("x")


def test_bad_app_is_refused_without_traceback():
    result = run_cli("--app", "no_such_module_xyz:app")
    assert result.returncode == 2 and "cannot load the application" in result.stderr
    assert "Traceback" not in result.stderr


def test_busy_port_is_reported(server_factory):
    server = server_factory("--no-access-log")
    result = run_cli("--port", str(server.port))
    assert result.returncode == 1 and "cannot listen" in result.stderr


def test_environment_configures_a_running_server(server_factory):
    server = server_factory(env={"CALC_THREADS": "3", "CALC_SERVER_HEADER": "envy"})
    server.wait_for_line(r"threads 3")
    assert requests.get(f"{server.url}/healthz", timeout=5).headers["Server"] == "envy"


def test_default_command_serves_the_calculator_on_8000():
    """`python3 -m server` with no arguments, the README's first command, answers /add/2/3 with 5."""
    probe = socket.socket()
    if probe.connect_ex(("127.0.0.1", 8000)) == 0:
        probe.close()
        pytest.skip("something else is listening on 127.0.0.1:8000")
    probe.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:8000" in line
        r = requests.get("http://127.0.0.1:8000/add/2/3", timeout=5)
        assert (r.status_code, r.text) == (200, "5")
    finally:
        proc.terminate()
        assert proc.wait(timeout=15) == 0


@pytest.mark.slow
def test_scripts_test_makes_and_reuses_its_own_virtual_environment(tmp_path):
    """scripts/test installs nothing into the system's Python (Debian's refuses, PEP 668): it makes
    .venv-test/ (again, when one without pip is in the way), runs ruff, mypy and pytest from there, and
    reinstalls only when the requirements change."""
    shutil.copytree(ROOT / "scripts" / "lib", tmp_path / "scripts" / "lib")
    shutil.copy(ROOT / "scripts" / "test", tmp_path / "scripts" / "test")
    requirements = "pytest>=8\nruff>=0.5\nmypy>=1.10\n"
    (tmp_path / "requirements-test.txt").write_text(requirements)
    (tmp_path / "pyproject.toml").write_text('[tool.mypy]\nfiles = ["test_where.py"]\nstrict = true\n')
    (tmp_path / "test_where.py").write_text(
        "import sys\n\n\ndef test_where() -> None:\n    print('PREFIX', sys.prefix)\n")
    env = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "PYTHONPATH"}}
    env["PYTHON"] = sys.executable if sys.prefix == sys.base_prefix else shutil.which("python3") or "python3"

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "scripts/test", "-q", "-s", "-p", "no:cacheprovider", "test_where.py"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    # What `python3 -m venv` leaves behind where ensurepip is missing (Debian without python3-venv): no pip.
    subprocess.run([env["PYTHON"], "-m", "venv", "--without-pip", str(tmp_path / ".venv-test")], check=True)
    first = run()
    assert first.returncode == 0, first.stdout + first.stderr
    assert "making the environment" in first.stderr
    assert f"PREFIX {tmp_path / '.venv-test'}" in first.stdout
    assert "installing requirements-test.txt" in first.stderr
    assert "Success: no issues found in 1 source file" in first.stdout  # mypy ran, with the project's settings
    second = run()
    assert second.returncode == 0 and "installing" not in second.stderr
    (tmp_path / "requirements-test.txt").write_text(requirements + "# changed\n")
    third = run()
    assert third.returncode == 0 and "installing requirements-test.txt" in third.stderr

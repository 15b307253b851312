"""The command line and environment: one table of settings, every entry reachable both ways."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import requests
from conftest import ROOT

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
        flag = f"--no-{option.name.replace('_', '-')}" if option.flag_only_true else option.flag
        assert flag in text and option.env in text, option.name


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
    (["--server-header", "a\r\nX-Injected: 1"], {}, "--server-header: 'a\\r\\nX-Injected: 1': must be printable ASCII"),
    ([], {"CALC_SERVER_HEADER": "a\nb"}, "CALC_SERVER_HEADER"),
    ([], {"CALC_WORKERS": "many"}, "CALC_WORKERS"),
    ([], {"CALC_ACCESS_LOG": "perhaps"}, "CALC_ACCESS_LOG"),
    ([], {"CALC_FORWARDED_ALLOW_IPS": "not-an-ip"}, "CALC_FORWARDED_ALLOW_IPS"),
])
def test_bad_settings_are_refused_with_a_clear_message(args, env, message):
    result = run_cli(*args, env=env)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


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
    """`python3 -m server` with no arguments, as the README says, answers /add/2/3 with 5."""
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


def test_readme_configuration_table_matches_the_settings():
    readme = (ROOT / "README.md").read_text()
    assert config.markdown_table() in readme

"""Issue 27's command-line and log points: help by topic, short usage errors, the pid file, imports from the
current directory and --chdir, the error log's one shape (text or JSON). Real processes throughout."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from harness import ROOT, start_server, wait_until
from test_cli import run_cli

from server import config

TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR|CRITICAL) \[\d+\] "
                       r"calc-server: \S")


def test_help_is_grouped_by_topic_from_the_one_table():
    """Each topic of config.GROUPS is a section of --help, holding exactly the options the table puts there.
    Failed on 575c707 (one flat list)."""
    result = run_cli("--help")
    assert result.returncode == 0
    sections: dict[str, str] = {}
    titles = [title for key, title in config.GROUPS if any(o.group == key for o in config.OPTIONS)]
    positions = [(result.stdout.index(f"\n{title}:\n"), title) for title in titles]
    assert [title for _, title in sorted(positions)] == titles  # in the table's order
    bounds = [*sorted(positions), (len(result.stdout), "")]
    for (start, title), (end, _) in itertools.pairwise(bounds):
        sections[title] = result.stdout[start:end]
    for option in config.OPTIONS:
        title = dict(config.GROUPS)[option.group]
        assert re.search(rf"\s{re.escape(option.flag)}\b", sections[title]), (option.name, title)
        for other, text in sections.items():
            if other != title:
                assert not re.search(rf"\s{re.escape(option.flag)}[\s,=]", text), (option.name, other)
    for expected in ("Listening", "TLS", "Processes and threads", "Timeouts", "Limits", "Logging", "Metrics"):
        assert expected in sections


@pytest.mark.parametrize("args", [("--portt", "3"), ("--port", "eighty"), ("--workers",)])
def test_a_usage_error_fits_on_a_screen_error_first(args):
    """The error, then where to read more: 2 lines, not 36 usage lines first (575c707)."""
    result = run_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert lines[0].startswith("python3 -m server: error: ")
    assert "--help" in lines[1] and "docs/configuration.md" in lines[1]


def _app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "myapp"
    app.mkdir()
    (app / "hello.py").write_text(textwrap.dedent("""\
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello from the current directory"]
        """))
    return app


def _console_script(tmp_path: Path) -> list[str]:
    """What pip's calc-server script does: its own directory, not the current one, is first on sys.path."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    script = bindir / "calc-server"
    script.write_text("import sys\nfrom server.cli import main\nsys.exit(main())\n")
    return [sys.executable, str(script)]


def _env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT)}  # the server package, as an installed one would be; not the app's directory


def test_console_script_imports_the_app_from_the_current_directory(tmp_path):
    """`calc-server --app hello:app` in the app's directory. Failed on 575c707: No module named 'hello'."""
    app = _app_dir(tmp_path)
    server = start_server("--app", "hello:app", "--no-access-log", command=_console_script(tmp_path), cwd=app,
                          env=_env())
    try:
        import requests

        assert requests.get(f"{server.url}/", timeout=5).text == "hello from the current directory"
    finally:
        server.stop()


def test_chdir_imports_the_app_from_that_directory(tmp_path):
    app = _app_dir(tmp_path)
    server = start_server("--app", "hello:app", "--chdir", str(app), "--no-access-log",
                          command=_console_script(tmp_path), cwd=tmp_path, env=_env())
    try:
        import requests

        assert requests.get(f"{server.url}/", timeout=5).text == "hello from the current directory"
    finally:
        server.stop()


def test_a_missing_module_says_where_it_looked(tmp_path):
    result = subprocess.run([*_console_script(tmp_path), "--app", "hello:app", "--port", "0"], cwd=tmp_path,
                            env={**_env(), "PATH": os.environ["PATH"]}, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    (line,) = [line for line in result.stderr.splitlines() if "cannot load the application" in line]
    assert TEXT_LINE.match(line) and " ERROR " in line
    assert "no module named 'hello'" in line and str(tmp_path) in line and "--chdir" in line
    bad = subprocess.run([*_console_script(tmp_path), "--chdir", str(tmp_path / "nowhere"), "--port", "0"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--chdir" in bad.stderr and "No such file or directory" in bad.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_pid_file_written_after_binding_and_removed_on_exit(tmp_path, workers):
    """The file holds the pid that signals go to (the master's with --workers 2). Failed on 575c707 (no --pid)."""
    pid_file = tmp_path / "run" / "calc.pid"
    pid_file.parent.mkdir()
    server = start_server("--pid", str(pid_file), "--workers", str(workers), "--no-access-log")
    try:
        assert pid_file.read_text() == f"{server.proc.pid}\n"  # there by the time the ready line is out
        second = run_cli("--pid", str(pid_file), "--port", "0")
        assert second.returncode == 1 and f"names process {server.proc.pid}, which is running" in second.stderr
        assert pid_file.read_text() == f"{server.proc.pid}\n"  # the refused one left it alone
        os.kill(int(pid_file.read_text()), signal.SIGUSR1)  # as docs/signals.md does: the server, nobody else
        assert server.proc.poll() is None
    finally:
        assert server.stop() == 0
    assert not pid_file.exists()
    assert list(pid_file.parent.iterdir()) == []  # no temporary file left either


def test_a_stale_pid_file_is_replaced(tmp_path):
    pid_file = tmp_path / "calc.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file.write_text(f"{dead.pid}\n")
    server = start_server("--pid", str(pid_file), "--no-access-log")
    try:
        assert pid_file.read_text() == f"{server.proc.pid}\n"
    finally:
        server.stop()
    assert not pid_file.exists()


def test_every_error_log_line_has_a_time_a_level_and_one_prefix(server_factory):
    """Failed on 575c707: lines began 'calc-server:' or 'server:', with no time or level."""
    server = server_factory("--metrics-bind", "127.0.0.1:0", "--no-access-log")
    server.signal(signal.SIGTTIN)  # answered with a warning without a master
    server.signal(signal.SIGHUP)
    server.wait_for_line("SIGTTIN")
    server.wait_for_line("SIGHUP")
    server.stop()
    lines = [line.rstrip("\n") for line in server.lines if line.strip()]
    assert len(lines) >= 4
    for line in lines:
        assert TEXT_LINE.match(line), line
    assert not [line for line in lines if re.search(r"\bserver: ", line.replace("calc-server: ", ""))]


def test_json_access_log_makes_the_error_log_json(server_factory):
    import requests

    server = server_factory("--access-log-format", "json", "--metrics-bind", "127.0.0.1:0")
    assert requests.get(f"{server.url}/add/2/3", headers={"X-Request-ID": "r-1"}, timeout=5).text == "5"
    server.signal(signal.SIGTTIN)
    wait_until(lambda: any("SIGTTIN" in line for line in server.lines), what="the SIGTTIN line")
    wait_until(lambda: any("r-1" in line for line in server.lines), what="the access line")
    server.stop()
    entries = [json.loads(line) for line in server.lines if line.strip()]  # every line is JSON
    errors = [e for e in entries if "level" in e]
    access = [e for e in entries if "request_id" in e]
    assert len(errors) + len(access) == len(entries)
    assert {e["level"] for e in errors} >= {"info", "warning"}
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in errors)
    assert any(e["message"].startswith("listening on http://127.0.0.1:") for e in errors)
    assert [e["uri"] for e in access] == ["/add/2/3"] and access[0]["request_id"] == "r-1"


def test_an_error_log_message_cannot_start_a_line_of_its_own():
    """Client text quoted in a message (a target, an address): control characters escaped; a newline starts a
    new line that carries the full prefix again, so no line of the log lacks the server's own prefix."""
    import logging

    from server.errorlog import JsonFormatter, TextFormatter

    record = logging.LogRecord("calc-server", logging.ERROR, __file__, 1, "GET %s: failed", ("/x\r\x1b[2J\x85\nFAKE",),
                               None)
    lines = TextFormatter().format(record).split("\n")
    assert len(lines) == 2 and all(TEXT_LINE.match(line) for line in lines)
    assert "\\x0D\\x1B[2J\\x85" in lines[0] and lines[1].endswith("calc-server: FAKE: failed")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "GET /x\r\x1b[2J\x85\nFAKE: failed" and entry["level"] == "error"

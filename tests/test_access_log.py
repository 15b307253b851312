"""The access log: escaping of every byte, the JSON and template formats, left-out paths, and a bounded buffer.

Issue 25 findings 3 and 6, issue 27's access-log points. Lines are read back
with parsers written here (a regex and ``json``), not with the server's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from harness import ROOT, wait_until

from server.accesslog import AccessLog, TemplateFormat, check_format

ALL_BYTES = "".join(chr(b) for b in range(256))  # what the parser hands over: bytes as Latin-1 characters


def _unescape_text(field: str) -> str:
    """Undo the text escaping: ``\\xHH`` is one byte, everything else is itself."""
    return re.sub(r"\\x([0-9A-F]{2})", lambda m: chr(int(m.group(1), 16)), field)


# combined: CLIENT - - [TIME] "METHOD TARGET VERSION" STATUS SIZE "REFERER" "AGENT" SECONDS rid=ID
COMBINED = re.compile(r'^(?P<client>\S+) - - \[(?P<time>[^\]]+)\] "(?P<method>\S+) (?P<target>\S+) (?P<version>\S+)" '
                      r'(?P<status>\d{3}) (?P<size>\d+) "(?P<referer>[^"]*)" "(?P<agent>[^"]*)" '
                      r'(?P<seconds>\d+\.\d{6}) rid=(?P<rid>\S+)$')


def _lines(fmt: str, entries: list[dict], **kwargs) -> list[str]:
    read, write = os.pipe()
    log = AccessLog(write, interval=0.01, line_format=fmt, **kwargs)
    try:
        for entry in entries:
            log.log(**entry)
        assert log.flush(timeout=5)
    finally:
        log.close()
        os.close(write)
    data = b""
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    return data.decode("ascii").splitlines(keepends=True)  # ascii: fails on any byte >= 0x80


def _entry(value: str, **override) -> dict:
    entry = {"client": "127.0.0.1", "method": "GET", "target": "/" + value, "version": "HTTP/1.1", "status": 200,
             "size": 5, "duration": 0.001, "referer": value, "agent": value, "request_id": value}
    entry.update(override)
    return entry


@pytest.mark.parametrize("byte", range(256))
def test_text_line_escapes_every_byte_and_round_trips(byte):
    """Each byte value in every client-given field: one printable-ASCII line, the value recovered exactly.
    Failed on 575c707 (C1 controls such as \\x85 raw, backslash not escaped)."""
    value = "a" + chr(byte) + "\\x22b\""
    lines = _lines("combined", [_entry(value, client=value)])
    assert len(lines) == 1 and lines[0].endswith("\n")
    line = lines[0][:-1]
    assert all(" " <= c <= "~" for c in line), line
    match = COMBINED.match(line)
    assert match, line
    for name in ("client", "referer", "agent", "rid"):
        assert _unescape_text(match.group(name)) == value, name
    assert _unescape_text(match.group("target")) == "/" + value


def test_text_line_with_all_bytes_at_once_and_a_forged_line():
    forged = '\n6.6.6.6 - - [01/Jan/2020:00:00:00 +0000] "GET /admin HTTP/1.1" 200 1 "-" "-" 0.1 rid=-'
    lines = _lines("combined", [_entry(ALL_BYTES), _entry(forged)])
    assert len(lines) == 2
    for line, value in zip(lines, (ALL_BYTES, forged), strict=True):
        match = COMBINED.match(line.rstrip("\n"))
        assert match and _unescape_text(match.group("agent")) == value


def _json_value(text: str) -> bytes:
    """A JSON field back to the bytes the client sent (non-UTF-8 bytes come as lone surrogates)."""
    return text.encode("utf-8", "surrogateescape")


@pytest.mark.parametrize("byte", range(256))
def test_json_line_escapes_every_byte_and_round_trips(byte):
    value = "a" + chr(byte) + "\\x22b\""
    lines = _lines("json", [_entry(value, client=value)])
    assert len(lines) == 1
    line = lines[0].rstrip("\n")
    assert all(" " <= c <= "~" for c in line), line
    entry = json.loads(line)
    for name in ("remote_addr", "referer", "user_agent", "request_id"):
        assert _json_value(entry[name]) == value.encode("latin-1"), name
    assert _json_value(entry["uri"]) == ("/" + value).encode("latin-1")


def test_json_line_keeps_utf8_text_as_text():
    agent = "Mozilla/5.0 (café ☕)".encode().decode("latin-1")  # as it arrives: UTF-8 bytes, one char per byte
    (line,) = _lines("json", [_entry("x", agent=agent)])
    assert json.loads(line)["user_agent"] == "Mozilla/5.0 (café ☕)"


def test_json_line_has_nginx_field_names_and_types():
    """The server's JSON line carries every field of nginx's calc_json log but the upstream_* ones nginx alone
    knows, with the same JSON types, so one request's two lines join on request_id."""
    template = (ROOT / "nginx" / "templates" / "default.conf.template").read_text()
    block = re.search(r"log_format calc_json escape=json\n(.*?);\n", template, re.S).group(1)
    nginx_fields = dict(re.findall(r'"(\w+)":("?)\$', block))
    (line,) = _lines("json", [_entry("x", request_id="abc-1")])
    entry = json.loads(line)
    for name, quoted in nginx_fields.items():
        if name.startswith("upstream_"):
            continue
        assert name in entry, name
        assert isinstance(entry[name], str) if quoted else isinstance(entry[name], int | float), name
    assert entry["request_id"] == "abc-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", entry["time"])  # nginx's $time_iso8601 in UTC


def test_template_format_in_gunicorns_spirit():
    fmt = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s %({x-request-id}i)s 100%%'
    (line,) = _lines(fmt, [_entry("x\"y", size=0, duration=0.25)])
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /x\\x22y HTTP/1\.1" 200 - "x\\x22y" "x\\x22y" '
                        r'250000 x\\x22y 100%\n', line), line
    with pytest.raises(ValueError, match=r"unknown access-log atom %\(z\)s"):
        TemplateFormat("%(z)s")
    with pytest.raises(ValueError, match="combined, json or a template"):
        check_format("jsn")


def test_left_out_paths_are_not_logged():
    lines = _lines("combined", [_entry("", target="/healthz"), _entry("", target="/healthz?probe=1"),
                                _entry("", target="/add/1/2")], exclude=("/healthz",))
    assert len(lines) == 1 and '"GET /add/1/2 HTTP/1.1"' in lines[0]


def test_real_server_json_log_joins_nginx_on_request_id(server_factory, nginx_proxy):
    """Through the repo's nginx template: nginx's JSON line and ours share the request id, given or generated.
    Also /healthz is left out with --access-log-exclude. Failed on 575c707 (no such settings)."""
    server = server_factory("--access-log-format", "json", "--access-log-exclude", "/healthz")
    proxy = nginx_proxy(server.address)
    given = requests.get(f"{proxy}/add/2/3", headers={"X-Request-ID": "join-me-1"}, timeout=5)
    generated = requests.get(f"{proxy}/add/4/5", timeout=5)
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert given.status_code == generated.status_code == 200
    rid = generated.headers["X-Request-ID"]

    def ours() -> dict[str, dict]:
        found = {}
        for line in server.lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if "request_id" in entry:
                    found[entry["request_id"]] = entry
        return found

    wait_until(lambda: {"join-me-1", rid} <= set(ours()), what="server JSON lines")
    wait_until(lambda: len([line for line in proxy.lines if "/add/" in line]) >= 2, what="nginx lines")
    theirs = {json.loads(line)["request_id"]: json.loads(line) for line in proxy.lines if "/add/" in line}
    for request_id, uri in (("join-me-1", "/add/2/3"), (rid, "/add/4/5")):
        assert ours()[request_id]["uri"] == theirs[request_id]["uri"] == uri
        assert ours()[request_id]["status"] == theirs[request_id]["status"] == 200
    assert not [e for e in ours().values() if e["uri"].startswith("/healthz")]


def test_real_server_escapes_header_bytes(server_factory):
    """Every byte a header value may carry (HTAB, SP, VCHAR, obs-text 0x80-0xFF), through a real server."""
    server = server_factory("--app", "apps:echo")
    value = bytes([9, *range(0x20, 0x7F), *range(0x80, 0x100)]).strip(b" \t")
    with socket.create_connection(server.address, timeout=5) as sock:
        sock.sendall(b"GET /bytes HTTP/1.1\r\nHost: a\r\nUser-Agent: " + value + b"\r\nConnection: close\r\n\r\n")
        while sock.recv(65536):
            pass
    line = server.wait_for_line(r'"GET /bytes HTTP/1\.1"').string.rstrip("\n")
    match = COMBINED.match(line)
    assert match, line
    assert _unescape_text(match.group("agent")).encode("latin-1") == value


# --- a stalled output --------------------------------------------------------------------------------------

def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_stalled_stdout_keeps_memory_bounded_and_counts_dropped_lines(tmp_path):
    """stdout a pipe nobody reads; 6,000 requests with 8 KB User-Agent, Referer and X-Request-ID (about
    150 MB of log lines). RSS stays within 40 MB of where it started, the server keeps answering, the drops
    are counted in the metrics and told in the error log once the pipe is read again.
    On 575c707 RSS grew with every line (24 MB to 515 MB in the issue's run)."""
    errors = tmp_path / "errors.log"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    proc = subprocess.Popen([sys.executable, "-m", "server", "--port", "0", "--error-logfile", str(errors),
                             "--metrics-bind", f"127.0.0.1:{metrics_port}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: errors.exists() and "listening on" in errors.read_text(), what="ready line")
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", errors.read_text()).group(1))
        big = "x" * 8000  # 8 KB: a field line stays within --max-header-size (8190)
        request = (f"GET /add/1/2 HTTP/1.1\r\nHost: a\r\nUser-Agent: {big}\r\nReferer: {big}\r\n"
                   f"X-Request-ID: {big}\r\n\r\n").encode()
        answer = b"HTTP/1.1 200"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            def batch(count: int) -> None:
                sock.sendall(request * count)
                seen = b""
                while seen.count(answer) < count:
                    chunk = sock.recv(1 << 20)
                    assert chunk, "the server closed the connection"
                    seen += chunk

            batch(200)  # warm up: threads, buffers, the pipe filled (64 KiB) and the writer blocked
            before = _rss_kib(proc.pid)
            for _ in range(30):
                batch(200)
            after = _rss_kib(proc.pid)
        assert after - before < 40 * 1024, f"RSS grew from {before} KiB to {after} KiB"
        assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
        def dropped() -> int:  # the count is published 4 times a second
            scrape = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            found = re.search(r"^calc_server_access_log_dropped_lines_total (\d+)", scrape, re.M)
            return int(found.group(1)) if found and int(found.group(1)) > 5000 else 0

        wait_until(dropped, what="more than 5,000 dropped lines counted (of 6,200 requests)")
        # the pipe is read again: the writer finishes its batch and says how many lines were lost
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "lines dropped" not in errors.read_text():
            with contextlib.suppress(BlockingIOError, TypeError):
                proc.stdout.read(1 << 20)
            time.sleep(0.01)
        text = errors.read_text()
        assert re.search(r"WARNING \[\d+\] calc-server: access log: \d+ lines dropped", text), text
    finally:
        proc.terminate()
        with contextlib.suppress(BlockingIOError, TypeError, ValueError):
            proc.stdout.read()  # type: ignore[union-attr]
        proc.wait(timeout=20)


def test_logs_page_lists_every_json_field_and_every_template_atom():
    """docs/logs.md's tables follow the code: the JSON line's keys, and the atoms a template may use."""
    from server.accesslog import _ATOMS

    page = (ROOT / "docs" / "logs.md").read_text()
    (line,) = _lines("json", [_entry("x")])
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", page, re.M):
        documented.update(re.findall(r"`([^`]+)`", row))
    assert set(json.loads(line)) <= documented, set(json.loads(line)) - documented
    atoms_table = page[page.index("| atom | value |"):page.index("An unknown atom")]
    shown = set(re.findall(r"`([^`]+)`", atoms_table))
    assert set(_ATOMS) <= shown, set(_ATOMS) - shown

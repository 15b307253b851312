"""Real server processes: ``python3 -m server`` as a child on a free loopback port.

A test that needs a server starts the real program and waits for its ready line, never for a
fixed sleep; the fixtures in tests/conftest.py stop every server a test started.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .client import RawClient
from .tools import ROOT, wait_until

READY = re.compile(r"listening on https?://(?P<host>\[[^\]]+\]|[^\s:]+):(?P<port>\d+)")
LISTENING = re.compile(r"listening on (?P<addresses>.+?) \(pid (?P<pid>\d+)")  # every listener, any kind

# A test marked with this runs twice: on a plain listener and on a TLS one (the listener_kind fixture).
both_listeners = pytest.mark.parametrize("listener_kind", ["plain", "tls"])


@dataclass
class ServerProcess:
    """A running ``python3 -m server`` child and the lines it printed."""

    proc: subprocess.Popen[str]
    host: str
    port: int
    lines: list[str] = field(default_factory=list)
    listening: list[str] = field(default_factory=list)  # the ready line's addresses: http://..., unix:/...
    _reader: threading.Thread | None = None
    tls: ssl.SSLContext | None = None  # the client context, when the server speaks TLS

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        """Wait until the server prints a line matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            current = list(self.lines)
            for line in current[seen:]:
                match = regex.search(line)
                if match:
                    return match
            seen = len(current)
            if self.proc.poll() is not None and (self._reader is None or not self._reader.is_alive()):
                break
            time.sleep(0.01)
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; output:\n{self.output()}")

    def connect(self, timeout: float = 5.0) -> RawClient:
        return RawClient.connect(self.address, timeout=timeout, tls=self.tls)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5)
        return self.proc.returncode


def start_server(*args: str, env: dict[str, str] | None = None, timeout: float = 15.0,
                 cwd: Path | None = None, command: list[str] | None = None,
                 pass_fds: tuple[int, ...] = (), error_log: Path | None = None) -> ServerProcess:
    """Start ``python3 -m server --port 0 ARGS`` and wait for its ready line (in ``error_log``, the file
    given as --error-logfile, if there is one: the ready line is an error-log line).

    ``command`` replaces ``python3 -m server`` (an installed ``calc-server``, a wrapper that sets up
    socket activation); ``pass_fds`` are inherited by the server. With only non-TCP listeners (--bind
    unix:...) host and port stay empty; ``listening`` has every address either way.
    """
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "tests"),
                                                           full_env.get("PYTHONPATH", "")]))
    if env:
        full_env.update(env)
    cmd = [*(command or [sys.executable, "-m", "server"]), "--host", "127.0.0.1", "--port", "0", *args]
    proc = subprocess.Popen(cmd, cwd=cwd or ROOT, env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, pass_fds=pass_fds)
    server = ServerProcess(proc=proc, host="", port=0)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            server.lines.append(line)

    server._reader = threading.Thread(target=pump, daemon=True)
    server._reader.start()
    try:
        if error_log is None:
            ready = server.wait_for_line(LISTENING.pattern, timeout=timeout)
        else:  # --error-logfile: the ready line is an error-log line, so it is in that file
            def ready_line() -> re.Match[str] | None:
                lines = error_log.read_text().splitlines() if error_log.exists() else []
                return next(filter(None, map(LISTENING.search, lines)), None)

            found = wait_until(ready_line, timeout=timeout, what=f"the ready line in {error_log}")
            assert found is not None
            ready = found
    except AssertionError:
        server.stop(timeout=5)
        raise
    server.listening = [address.split(" (")[0] for address in ready.group("addresses").split(", ")]
    match = READY.search(ready.string)
    if match:
        server.host = match.group("host").strip("[]")
        server.port = int(match.group("port"))
    return server

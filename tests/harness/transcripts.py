"""The console transcripts of the docs, found, and replayed against real programs.

A transcript is a fenced block that is either ``console`` or has lines starting with ``$ ``. Each
one is replayed by tests/test_docs.py, or is marked, on the last line before its fence, with

    <!-- illustrative: why it cannot run here, and what tests the same thing -->

Replaying a page (``PageSession``) runs its transcripts in order, as a reader would type them:

- a ``$ python3 -m server ...``, ``$ calc-server ...`` or ``$ systemd-socket-activate ...`` whose
  shown output is not a usage error starts a server in the background and waits for the lines shown.
  Its ports are replaced by free ones (every later ``:PORT`` on the page is rewritten the same way),
  and it runs until the page is done;
- every other command runs in ``bash`` with the directory and the exported variables the commands
  before it left (``cd``, ``export`` carry over), from the checkout's root;
- ``/tmp/...`` paths become a scratch directory of the page's own, ``/path/to/checkout`` a copy of the
  checkout, so nothing is written into the repository or shared with another run;
- output is compared line by line after putting the page's values back (ports, pids, log timestamps,
  the scratch directory, the machine's open-file limit); a line ``...`` stands for any lines. ``curl`` compares
  its standard output (its progress meter goes to stderr), ``curl -i`` the status line, the headers
  shown (``Date`` is not compared) and the body; other commands compare stdout and stderr together.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .tools import ROOT, require_tool

FENCE = re.compile(r"^```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"^<!-- illustrative: (?P<reason>.+?) -->$")
STAMP = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z\b")
SERVER_COMMANDS = ("python3 -m server", "calc-server", "systemd-socket-activate")


@dataclass
class Step:
    command: str
    expected: list[str]


@dataclass
class Transcript:
    page: str
    line: int
    steps: list[Step]
    illustrative: str | None  # the reason, when marked


def transcripts(path: Path) -> list[Transcript]:
    """Every transcript of a page, in order."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        body = match["body"]
        if match["lang"] != "console" and not re.search(r"^\$ ", body, re.MULTILINE):
            continue
        before = [line for line in text[:match.start()].splitlines() if line.strip()]
        marker = MARKER.match(before[-1]) if before else None
        steps: list[Step] = []
        continued = False
        for line in body.splitlines():
            if continued:  # a command that ended with a backslash goes on
                steps[-1].command = steps[-1].command[:-1].rstrip() + " " + line.strip()
            elif line.startswith("$ "):
                steps.append(Step(line[2:], []))
            elif steps:
                steps[-1].expected.append(line)
            continued = bool(steps) and steps[-1].command.endswith("\\") and not steps[-1].expected
        found.append(Transcript(path.name, text[:match.start()].count("\n") + 1, steps,
                                marker["reason"] if marker else None))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line; a line ``...`` in the transcript stands for any lines the reader need not see."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Background:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))


class PageSession:
    """One page's transcripts, replayed in order (see the module docstring)."""

    def __init__(self, page: str, scratch: Path, ports: dict[int, int]) -> None:
        self.page = page
        self.scratch = scratch
        self.ports = dict(ports)  # the page's port -> the real one
        self.pids: dict[int, int] = {}  # a real pid -> the page's
        self.servers: list[Background] = []
        self.state = scratch / ".session"
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "cwd").write_text(str(ROOT))
        env = {k: v for k, v in os.environ.items() if not k.startswith("CALC_")}
        # `python3 -m server` finds the checkout's package from any directory the page changes to
        env.update(COLUMNS="100", PYTHONPATH=str(ROOT))
        self.env = env

    # -- the page's values to the real ones, and back ---------------------------------------------

    def _to_real(self, command: str) -> str:
        command = re.sub(r"(?<![\w.])/tmp(?=/|\b)", str(self.scratch), command)
        if "/path/to/checkout" in command:
            command = command.replace("/path/to/checkout", str(self._checkout()))
        for page_port, real in self.ports.items():
            command = re.sub(rf"(?<=:){page_port}(?!\d)", str(real), command)
        return command

    def _to_page(self, text: str, expected: list[str]) -> list[str]:
        text = text.replace(str(self.scratch), "/tmp")
        for page_port, real in self.ports.items():
            text = re.sub(rf"(?<=:){real}(?!\d)", str(page_port), text)
        for real_pid, page_pid in self.pids.items():
            text = re.sub(rf"\bpid {real_pid}\b", f"pid {page_pid}", text)
            text = text.replace(f"[{real_pid}]", f"[{page_pid}]")
        stamp = STAMP.search("\n".join(expected))
        if stamp:  # log lines carry the time they were written
            text = STAMP.sub(stamp[0], text)
        shown = re.search(r"open files (\d+)", "\n".join(expected))
        if shown:  # the machine's descriptor limit, not the server's doing
            text = re.sub(r"open files \d+", f"open files {shown[1]}", text)
        return text.splitlines()

    def _checkout(self) -> Path:
        copy = self.scratch / "checkout"
        if not copy.exists():
            skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "build", "dist", "site",
                                          "tmp", ".hypothesis", ".pytest_cache", ".ruff_cache", ".mypy_cache")
            shutil.copytree(ROOT, copy, ignore=skip)
        return copy

    # -- running ----------------------------------------------------------------------------------

    def run(self, step: Step) -> str | None:
        """Replay one step; None when it shows what the transcript shows, else what went wrong."""
        words = [w for w in shlex.split(step.command) if not re.fullmatch(r"[A-Za-z_]\w*=.*", w)]
        program = words[0] if words else ""
        if program in ("kill", "pkill", "killall", "docker", "docker-compose", "systemctl", "locust") \
                or program.endswith("/locust") or "locust" in words[1:3] or program == "scripts/test":
            # never replayed: a pid or a name from the page could hit anybody's process or container
            return f"{self.page}: `{step.command}` cannot be replayed safely; mark its block illustrative"
        if program and program not in ("cd", "export", "calc-server") and "/" not in program \
                and not self._found(program):
            require_tool(program, f"{self.page} shows `{step.command}`")  # skips, or fails under CI
        if step.command.startswith(SERVER_COMMANDS) and not any("error:" in line for line in step.expected):
            return self._start(step)
        return self._foreground(step)

    def _found(self, program: str) -> bool:
        """Whether the page's shell (with what the commands before exported) finds the program."""
        script = (f'cd "$(cat {self.state}/cwd)"; if [ -f {self.state}/env ]; then . {self.state}/env; fi\n'
                  f"command -v {shlex.quote(program)}")
        return subprocess.run(["bash", "-c", script], capture_output=True, env=self.env, timeout=30).returncode == 0

    def _foreground(self, step: Step) -> str | None:
        command = self._to_real(step.command)
        curl = command.startswith("curl ")
        script = (f'cd "$(cat {self.state}/cwd)"; if [ -f {self.state}/env ]; then . {self.state}/env; fi\n'
                  f"{command}\nrc=$?; pwd > {self.state}/cwd; export -p > {self.state}/env; exit $rc\n")
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=self.env,
                                stdin=subprocess.DEVNULL)
        output = result.stdout if curl else result.stdout + result.stderr
        if curl and result.returncode != 0:
            return f"curl failed ({result.returncode}): {result.stderr}"
        actual = self._to_page(output, step.expected)
        if curl and any(re.fullmatch(r"-[a-zA-Z]*i[a-zA-Z]*", arg) for arg in shlex.split(command)):
            return self._compare_head(step.expected, actual)
        return None if matches(step.expected, actual) else self._differ(step, actual)

    def _compare_head(self, expected: list[str], actual: list[str]) -> str | None:
        """curl -i: the status line, the headers shown (not Date), the body."""
        blank, got_blank = expected.index(""), actual.index("")
        head = actual[:got_blank]
        problems = [] if expected[0] == head[0] else [f"status line {head[0]!r}, not {expected[0]!r}"]
        problems += [f"no header {line!r} in {head}" for line in expected[1:blank]
                     if line not in head and not line.startswith("Date:")]
        if not matches(expected[blank + 1:], actual[got_blank + 1:]):
            problems.append(f"body {actual[got_blank + 1:]}, not {expected[blank + 1:]}")
        return "; ".join(problems) or None

    def _start(self, step: Step) -> str | None:
        command = step.command
        page_ports = [int(p) for p in re.findall(r"(?<=:)(\d{4,5})(?!\d)", command)]
        page_ports += [int(p) for p in re.findall(r"--port (\d+)", command)]
        if command.startswith(("python3 -m server", "calc-server")) and not re.search(r"--port|-b |--bind", command):
            page_ports.append(8000)
            command += " --port 8000"  # the default, made explicit so it can be moved to a free port
        for port in page_ports:
            self.ports[port] = free_port()
        real = self._to_real(command)
        real = re.sub(r"--port (\d+)", lambda m: f"--port {self.ports.get(int(m[1]), int(m[1]))}", real)
        if real.startswith("calc-server"):  # the installed script is `python3 -m server` under another name
            real = f"{shlex.quote(sys.executable)} -m server" + real.removeprefix("calc-server")
        cwd = (self.state / "cwd").read_text().strip()
        proc = subprocess.Popen(["bash", "-c", f"exec {real}"], cwd=cwd, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        server = Background(proc)
        self.servers.append(server)
        threading.Thread(target=server.pump, daemon=True).start()
        shown = re.search(r"pid (\d+)", "\n".join(step.expected))
        if shown:
            self.pids[proc.pid] = int(shown[1])
        wanted = [line for line in step.expected if line != "..."]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            actual = self._to_page("\n".join(server.lines), step.expected)
            if len(actual) >= len(wanted) and matches([*step.expected, "..."], actual):
                return None
            if proc.poll() is not None and len(server.lines) == len(actual):
                break
            time.sleep(0.05)
        return self._differ(step, self._to_page("\n".join(server.lines), step.expected))

    def _differ(self, step: Step, actual: list[str]) -> str:
        shown = "\n".join(step.expected)
        got = "\n".join(actual)
        return f"{self.page}: $ {step.command}\n--- the page shows:\n{shown}\n--- it printed:\n{got}"

    def close(self) -> None:
        for server in self.servers:
            if server.proc.poll() is None:
                os.killpg(server.proc.pid, signal.SIGTERM)
        for server in self.servers:
            try:
                server.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.proc.pid, signal.SIGKILL)
                server.proc.wait(timeout=5)

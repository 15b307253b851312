"""The docker compose stack, for real: a Docker engine, the image built from the Dockerfile, nginx in front.

One stack per module (a unique project name, three server replicas, nginx published on a free
loopback port), brought up with ``up -d --build`` and waited for with ``docker-compose-wait``;
``down -v --remove-orphans`` at the end. The tests run in file order: the later ones stop
and restart containers, and the last one takes the stack down and checks nothing is left.

Base images: PYTHON_IMAGE / NGINX_IMAGE from the environment, else the official images when
present, else the stand-ins scripts/docker-setup builds (there is no registry to pull from in CI).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from conftest import IN_CI, ROOT, require_tool, wait_until
from conftest import fetch as http_fetch

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGES = {  # variable: (official image, local stand-in)
    "PYTHON_IMAGE": ("python:3.12-slim", "local/python:3.11-bookworm"),
    "NGINX_IMAGE": ("nginx:1.27-alpine", "local/nginx:bookworm"),
}
REPLICAS = 3
PROBLEM = "application/problem+json"


def skip_or_fail(message: str) -> None:
    if IN_CI:
        pytest.fail(message + "; .ci/run (scripts/docker-setup) must provide it")
    pytest.skip(message)


def run(cmd: list[str], timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


# docker commands are slow to answer: look every half second
poll = functools.partial(wait_until, interval=0.5)


def fetch(port: int, path: str, method: str = "GET", body: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 15.0) -> tuple[int, dict[str, str], bytes]:
    return http_fetch(f"http://127.0.0.1:{port}", path, method, body, headers, timeout=timeout)


def docker_engine() -> str:
    docker = require_tool("docker", "the compose tests need a Docker engine")
    info = run([docker, "info", "--format", "{{.ServerVersion}}"], timeout=30, check=False)
    if info.returncode != 0:
        skip_or_fail(f"the Docker engine is not running ({info.stderr.strip()[:200]}); scripts/docker-setup starts it")
    return docker


def compose_command(docker: str) -> list[str]:
    """Compose v2 (``docker compose``) when the CLI has it, else v1 ``docker-compose``."""
    if run([docker, "compose", "version"], timeout=30, check=False).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose", "the compose tests drive the stack with Compose")]


def pick_image(docker: str, variable: str) -> str:
    if os.environ.get(variable):
        return os.environ[variable]
    for image in IMAGES[variable]:
        if run([docker, "image", "inspect", image], timeout=30, check=False).returncode == 0:
            return image
    skip_or_fail(f"neither {' nor '.join(IMAGES[variable])} is present; scripts/docker-setup builds the second")
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Stack:
    docker: str
    compose_cmd: list[str]
    project: str
    env: dict[str, str]
    port: int
    timings: dict[str, float] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose_cmd, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project, *args]
        return run(cmd, timeout=timeout, check=check, env=self.env)

    def run_docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([self.docker, *args], timeout=timeout, check=check)

    def containers(self, service: str | None = None, all_states: bool = False) -> list[str]:
        """Ids of the project's containers (of one service), from the labels Compose v1 and v2 both set."""
        cmd = ["ps", "-q", "--no-trunc", "--filter", f"label=com.docker.compose.project={self.project}"]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            cmd.append("--all")
        return self.run_docker(*cmd).stdout.split()

    def remove_helpers(self) -> None:
        """Remove the containers the tests themselves started on the stack's network."""
        for container in self.run_docker("ps", "-aq", "--filter", f"label=calctest={self.project}").stdout.split():
            self.run_docker("rm", "-f", container, check=False)

    def inspect(self, container: str, template: str) -> str:
        return self.run_docker("inspect", "-f", template, container).stdout.strip()

    def address(self, container: str) -> str:
        return self.inspect(container, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")

    @property
    def network(self) -> str:
        return self.run_docker("network", "ls", "-q", "--filter",
                               f"label=com.docker.compose.project={self.project}").stdout.split()[0]

    def logs(self, container: str) -> str:
        proc = self.run_docker("logs", container)
        return proc.stdout + proc.stderr

    def all_healthy(self, expected: int) -> bool:
        ids = self.containers()
        states = [self.inspect(c, "{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}") for c in ids]
        return len(ids) == expected and all(s == "running/healthy" for s in states)

    def wait_healthy(self, timeout: float = 120) -> None:
        """docker-compose-wait (it checks one container per service), then every replica."""
        started = time.monotonic()
        if shutil.which("docker-compose") or IN_CI:
            waiter = require_tool("docker-compose-wait", "the compose tests wait for health with it")
            proc = run([waiter, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project, "-t", f"{int(timeout)}s"],
                       timeout=timeout + 30, check=False, env=self.env)
            assert proc.returncode == 0, f"docker-compose-wait: {proc.stdout}{proc.stderr}"
            assert "All processes up and running" in proc.stdout
        poll(lambda: self.all_healthy(REPLICAS + 1), timeout, "every container healthy")
        self.timings["healthy"] = time.monotonic() - started

    def replica_traffic(self, count: int = 30) -> dict[str, int]:
        """Send ``count`` requests with fresh ids through nginx; how many each server replica logged."""
        tag = uuid.uuid4().hex[:12]
        for i in range(count):
            status, _, body = fetch(self.port, f"/add/{i}/1", headers={"X-Request-ID": f"{tag}-{i}"})
            assert (status, body) == (200, str(i + 1).encode())

        def counted() -> dict[str, int] | None:
            seen = {c: self.logs(c).count(f"rid={tag}-") for c in self.containers("server")}
            return seen if sum(seen.values()) == count else None

        return poll(counted, 15, "every request in some replica's log")


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    docker = docker_engine()
    compose_cmd = compose_command(docker)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALC_", "NGINX_", "LOCUST_", "COMPOSE_"))}
    env.update({variable: pick_image(docker, variable) for variable in IMAGES})
    env.update({"NGINX_PORT": str(port), "NGINX_BIND": "127.0.0.1"})
    stack = Stack(docker, compose_cmd, f"calctest-{uuid.uuid4().hex[:10]}", env, port)
    try:
        started = time.monotonic()
        stack.compose("up", "-d", "--build", "--scale", f"server={REPLICAS}", timeout=600)
        stack.timings["up"] = time.monotonic() - started
        stack.wait_healthy()
        yield stack
    finally:
        stack.remove_helpers()
        stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180, check=False)


# -- through nginx on the published port ---------------------------------------------------------------------

def test_calculator_answers_through_nginx(stack):
    status, headers, body = fetch(stack.port, "/add/2/3")
    assert (status, body) == (200, b"5")
    assert headers["content-type"].startswith("text/plain")
    assert headers["server"] == "nginx"
    assert len(headers["x-request-id"]) == 32
    status, _, body = fetch(stack.port, "/calc", "POST", json.dumps({"op": "mult", "arg1": 2, "arg2": 4}).encode(),
                            {"Content-Type": "application/json"})
    assert status == 200
    assert json.loads(body)["result"] == 8


def test_errors_keep_status_and_problem_documents(stack):
    status, headers, body = fetch(stack.port, "/no/such/thing")
    assert status == 404
    assert headers["content-type"] == PROBLEM
    assert json.loads(body)["instance"] == "/no/such/thing"  # the server's document, passed through
    status, headers, body = fetch(stack.port, "/calc", "POST", b"{not json", {"Content-Type": "application/json"})
    assert status == 400
    assert headers["content-type"] == PROBLEM
    assert json.loads(body)["status"] == 400
    # nginx's own refusal, before the server sees anything: a problem document too.
    status, headers, body = fetch(stack.port, "/calc", "POST", b"0" * 2_000_000, {"Content-Type": "application/json"})
    assert status == 413
    assert headers["content-type"] == PROBLEM
    assert json.loads(body)["request_id"] == headers["x-request-id"]


def test_nginx_request_id_appears_in_the_server_log(stack):
    status, headers, _ = fetch(stack.port, "/add/40/2")
    assert status == 200
    rid = headers["x-request-id"]

    def line_with_rid(service: str, text: str) -> str:
        lines = stack.compose("logs", "--no-color", "--no-log-prefix", service).stdout.splitlines()
        return next((line for line in lines if text in line), "")

    server_line = poll(lambda: line_with_rid("server", f"rid={rid}"), 15, f"request id {rid} in the server log")
    nginx_line = poll(lambda: line_with_rid("nginx", f'"request_id":"{rid}"'), 15, f"request id {rid} in nginx's log")
    # The server logs the client nginx saw (it trusts nginx's X-Forwarded-For), not nginx's own address.
    assert server_line.split()[0] == json.loads(nginx_line)["remote_addr"], (server_line, nginx_line)


def test_containers_on_the_compose_network_reach_nginx_and_server(stack):
    script = ("import json, urllib.request as u; print(json.dumps([u.urlopen(url, timeout=10).read().decode() "
              "for url in ('http://nginx/add/2/3', 'http://server:8000/add/2/3')]))")
    proc = stack.run_docker("run", "--rm", "--label", f"calctest={stack.project}", "--network", stack.network,
                            stack.env["PYTHON_IMAGE"], "python3", "-c", script, timeout=60)
    assert json.loads(proc.stdout) == ["5", "5"]


def test_every_replica_gets_traffic(stack):
    assert len(stack.containers("server")) == REPLICAS
    counts = stack.replica_traffic()
    assert all(counts.values()), counts


def test_server_runs_unprivileged_on_a_read_only_root(stack):
    uid = stack.compose("exec", "-T", "server", "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0
    # Even root in that container cannot write to /: the filesystem is read-only (tmpfs /tmp aside).
    denied = stack.compose("exec", "-T", "-u", "0", "server", "sh", "-c", "echo x > /probe", check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr + denied.stdout
    stack.compose("exec", "-T", "server", "sh", "-c", "echo x > /tmp/probe && rm /tmp/probe")
    for container in stack.containers("server"):
        assert stack.inspect(container, "{{.HostConfig.ReadonlyRootfs}}") == "true"
        assert stack.inspect(container, "{{json .HostConfig.CapDrop}}") == '["ALL"]'
        assert "no-new-privileges:true" in stack.inspect(container, "{{json .HostConfig.SecurityOpt}}")
        assert stack.inspect(container, "{{.HostConfig.RestartPolicy.Name}}") == "unless-stopped"


def test_nginx_health(stack):
    status, _, body = fetch(stack.port, "/nginx-health")
    assert status == 200
    assert json.loads(body) == {"status": "ok"}
    (nginx,) = stack.containers("nginx")
    assert stack.inspect(nginx, "{{.State.Health.Status}}") == "healthy"


# -- replicas going away and coming back ---------------------------------------------------------------------

def test_requests_skip_a_replica_that_went_away(stack):
    victim = stack.containers("server")[0]
    stack.run_docker("stop", "-t", "10", victim)
    try:
        # At once, before nginx reloads: requests that pick the stopped replica go on to another one.
        for i in range(12):
            status, _, _ = fetch(stack.port, f"/add/{i}/1")
            assert status == 200
            status, _, body = fetch(stack.port, "/calc", "POST", b'{"op":"add","arg1":1,"arg2":2}',
                                    {"Content-Type": "application/json"})
            assert (status, json.loads(body)["result"]) == (200, 3)
    finally:
        stack.run_docker("start", victim)
    poll(lambda: stack.all_healthy(REPLICAS + 1), 60, "the replica healthy again")


def test_stopped_server_answers_quickly_then_recovers_without_restarting_nginx(stack):
    (nginx,) = stack.containers("nginx")
    nginx_started = stack.inspect(nginx, "{{.State.StartedAt}}/{{.RestartCount}}")
    before = {stack.address(c) for c in stack.containers("server")}
    stack.compose("stop", "server", timeout=120)
    assert not stack.containers("server")

    for path, method, body in (("/add/2/3", "GET", None), ("/calc", "POST", b'{"op":"add","arg1":1,"arg2":2}'),
                               ("/add/2/3", "GET", None)):
        started = time.monotonic()
        status, headers, data = fetch(stack.port, path, method, body, {"Content-Type": "application/json"})
        assert time.monotonic() - started < 5, "nginx must not hang when no replica answers"
        assert status in (502, 503, 504)
        assert headers["content-type"] == PROBLEM
        assert json.loads(data)["status"] == status

    # Another container takes one of the freed addresses, so the replicas come back on other ones:
    # nginx has to notice, as it resolved `server` when it started.
    stack.run_docker("run", "-d", "--rm", "--label", f"calctest={stack.project}", "--network", stack.network,
                     stack.env["PYTHON_IMAGE"], "sleep", "300")
    try:
        stack.compose("start", "server", timeout=120)
        poll(lambda: stack.all_healthy(REPLICAS + 1), 60, "the replicas healthy again")
        after = {stack.address(c) for c in stack.containers("server")}
        assert after != before

        poll(lambda: fetch(stack.port, "/add/2/3")[::2] == (200, b"5"), 30, "a request through nginx succeeding")
        # Every replica, at its new address, gets requests again...
        poll(lambda: all(stack.replica_traffic().values()), 20, "traffic on every replica")
    finally:
        stack.remove_helpers()
    # ...from the same nginx process that was running before.
    assert stack.inspect(nginx, "{{.State.StartedAt}}/{{.RestartCount}}") == nginx_started
    assert "reloading nginx" in stack.logs(nginx)


def test_down_leaves_nothing_behind(stack):
    stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180)
    label = f"label=com.docker.compose.project={stack.project}"
    assert stack.containers(all_states=True) == []
    assert stack.run_docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert stack.run_docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    with contextlib.suppress(ConnectionError, OSError):
        fetch(stack.port, "/nginx-health", timeout=3)
        pytest.fail("something still answers on the published port")


# -- the compose file itself ------------------------------------------------------------------------------------

def test_compose_file_is_spec_format_with_a_loadtest_profile():
    yaml = pytest.importorskip("yaml")
    raw = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert "version" not in raw  # the Compose specification: no obsolete version key
    assert "container_name" not in raw["services"]["server"]  # it scales
    assert "ports" not in raw["services"]["server"]
    compose = require_tool("docker-compose", "validating the compose file with Compose v1")
    config = yaml.safe_load(run([compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "loadtest",
                                 "config"], env={**os.environ, "LOCUST_PORT": "18089"}).stdout)
    locust = config["services"]["locust"]
    assert locust["profiles"] == ["loadtest"]
    assert locust["command"] == ["-f", "/mnt/locust/locustfile.py", "--host", "http://nginx"]
    assert f"{ROOT / 'loadtest'}:/mnt/locust:ro" in locust["volumes"]
    assert any(str(port).endswith(":18089:8089/tcp") for port in locust["ports"])
    assert locust["depends_on"] == {"nginx": {"condition": "service_healthy"}}
    assert config["services"]["nginx"]["depends_on"] == {"server": {"condition": "service_healthy"}}

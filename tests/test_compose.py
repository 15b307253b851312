"""The docker compose stack, for real: a Docker engine, the image built from the Dockerfile, nginx in front.

One stack per module (a unique project name, three server replicas, nginx published on a free
loopback port), brought up with Compose v2's ``up -d --build --wait`` (``COMPOSE_BAKE=false``:
there is no buildx here); ``down -v --remove-orphans --rmi local`` at the end. The tests run in
file order: the later ones stop and restart containers, and the one after them takes the stack
down and checks nothing is left. One test keeps the Compose v1 path working: ``docker-compose``
with ``docker-compose-wait``, on a stack of its own.

Base images: PYTHON_IMAGE / NGINX_IMAGE from the environment, else the official images when
present, else the stand-ins scripts/docker-setup builds (there is no registry to pull from in CI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import IN_CI, ROOT, require_tool, wait_until
from harness import fetch as http_fetch

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGES = {  # variable: (official image, local stand-in)
    "PYTHON_IMAGE": ("python:3.13-slim", "local/python:3.13-trixie"),
    "NGINX_IMAGE": ("nginx:1.30-alpine", "local/nginx:sid"),
    "PROMETHEUS_IMAGE": ("prom/prometheus:v2.53.3", "local/prometheus:bookworm"),  # the monitoring profile's
}
# The Locust image docker-compose.yml pins, and the stand-in scripts/docker-setup builds of that version;
# only the loadtest profile's tests ask for it.
LOCUST_VERSION = re.search(r"locustio/locust:(\d+\.\d+\.\d+)", (ROOT / "docker-compose.yml").read_text()).group(1)
LOCUST_IMAGES = (f"locustio/locust:{LOCUST_VERSION}", f"local/locust:{LOCUST_VERSION}")
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
    """Compose v2, ``docker compose`` (scripts/install-compose-v2 installs the CLI plugin)."""
    version = run([docker, "compose", "version", "--short"], timeout=30, check=False)
    if version.returncode != 0:
        skip_or_fail("Compose v2 (`docker compose`) is not installed; scripts/install-compose-v2 installs it")
    assert version.stdout.strip().lstrip("v").startswith("2."), version.stdout
    return [docker, "compose"]


def compose_env(docker: str, port: int) -> dict[str, str]:
    """This process's environment without the stack's variables, plus the images and nginx on ``port``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALC_", "NGINX_", "LOCUST_", "SERVER_", "COMPOSE_"))}
    env.update({variable: pick_image(docker, variable) for variable in IMAGES})
    env.update({"NGINX_PORT": str(port), "NGINX_BIND": "127.0.0.1", "COMPOSE_BAKE": "false"})
    return env


def pick_image(docker: str, variable: str) -> str:
    if os.environ.get(variable):
        return os.environ[variable]
    for image in IMAGES.get(variable) or LOCUST_IMAGES:
        if run([docker, "image", "inspect", image], timeout=30, check=False).returncode == 0:
            return image
    skip_or_fail(f"neither {' nor '.join(IMAGES.get(variable) or LOCUST_IMAGES)} is present; "
                 "scripts/docker-setup builds the second")
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

    def wait_with_docker_compose_wait(self, timeout: float = 120) -> None:
        """docker-compose-wait (the Compose v1 companion; it checks one container per service)."""
        waiter = require_tool("docker-compose-wait", "the Compose v1 path waits for health with it")
        proc = run([waiter, "-f", str(ROOT / "docker-compose.yml"), "-p", self.project, "-t", f"{int(timeout)}s"],
                   timeout=timeout + 30, check=False, env=self.env)
        assert proc.returncode == 0, f"docker-compose-wait: {proc.stdout}{proc.stderr}"
        assert "All processes up and running" in proc.stdout

    def addresses_logged(self, rid: str) -> tuple[str, str] | None:
        """(client address in nginx's access log, client address in a server's access log) for a request id."""
        seen = [json.loads(line[line.index("{"):])["remote_addr"] for c in self.containers("nginx")
                for line in self.logs(c).splitlines() if f'"request_id":"{rid}"' in line]
        served = [line.split()[0] for c in self.containers("server") for line in self.logs(c).splitlines()
                  if line.endswith(f"rid={rid}")]
        return (seen[0], served[0]) if seen and served else None

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
    stack = Stack(docker, compose_cmd, f"calctest-{uuid.uuid4().hex[:10]}", compose_env(docker, port), port)
    try:
        started = time.monotonic()
        # --wait: returns once every container is healthy (fails if one is not within the timeout).
        stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "180", "--scale", f"server={REPLICAS}",
                      timeout=600)
        stack.timings["up"] = time.monotonic() - started
        assert stack.all_healthy(REPLICAS + 1)
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
    poll(lambda: f"rid={rid}" in stack.compose("logs", "--no-color", "server").stdout, 15,
         f"request id {rid} in the server log")


def test_server_logs_the_client_address_nginx_saw(stack):
    """The access log names the client, not nginx: X-Forwarded-For from nginx is trusted by default."""
    (nginx,) = stack.containers("nginx")
    nginx_address = stack.address(nginx)
    # From a container on the stack's network: the client knows its own address.
    tag = uuid.uuid4().hex[:16]
    script = ("import socket, sys; s = socket.create_connection(('nginx', 80), timeout=10); "
              f"s.sendall(b'GET /add/1/1 HTTP/1.1\\r\\nHost: calc\\r\\nX-Request-ID: {tag}\\r\\n"
              "Connection: close\\r\\n\\r\\n'); print(s.getsockname()[0]); sys.stdout.flush(); "
              "assert b' 200 ' in s.recv(65536)")
    proc = stack.run_docker("run", "--rm", "--label", f"calctest={stack.project}", "--network", stack.network,
                            stack.env["PYTHON_IMAGE"], "python3", "-c", script, timeout=60)
    client = proc.stdout.strip()
    # And from this machine through the published port: whatever address nginx saw.
    status, headers, _ = fetch(stack.port, "/add/2/2")
    assert status == 200
    host_rid = headers["x-request-id"]

    in_nginx, in_server = poll(lambda: stack.addresses_logged(tag), 15, f"request {tag} in nginx's and a server's log")
    print(f"client {client}: nginx logged {in_nginx}, the server {in_server}; nginx itself is {nginx_address}")
    assert in_nginx == client
    assert in_server == client != nginx_address
    in_nginx, in_server = poll(lambda: stack.addresses_logged(host_rid), 15, f"request {host_rid} in both logs")
    print(f"from the host: nginx logged {in_nginx}, the server {in_server}")
    assert in_server == in_nginx != nginx_address


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


def test_nginx_runs_hardened_on_a_read_only_root(stack):
    (nginx,) = stack.containers("nginx")
    assert stack.inspect(nginx, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    assert stack.inspect(nginx, "{{json .HostConfig.CapDrop}}") == '["ALL"]'
    added = {cap.removeprefix("CAP_") for cap in json.loads(stack.inspect(nginx, "{{json .HostConfig.CapAdd}}"))}
    assert added == {"CHOWN", "SETUID", "SETGID"}
    assert "no-new-privileges:true" in stack.inspect(nginx, "{{json .HostConfig.SecurityOpt}}")
    denied = stack.compose("exec", "-T", "nginx", "sh", "-c", "echo x > /etc/nginx/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr + denied.stdout
    # What the workers run with: an unprivileged user, and no capability at all.
    workers = stack.compose("exec", "-T", "nginx", "sh", "-c",
                            "for p in /proc/[0-9]*; do grep -q '^nginx: worker' $p/cmdline 2>/dev/null && "
                            "awk '/^(Uid|CapEff):/ {print $2}' $p/status; done; true").stdout.split()
    assert workers and workers[0::2] == [workers[0]] * (len(workers) // 2) and workers[0] != "0", workers
    assert set(workers[1::2]) == {"0000000000000000"}, workers
    # A body larger than the in-memory buffer goes through a temp file: the tmpfs works for nginx's user.
    status, _, _ = fetch(stack.port, "/calc", "POST", b" " * 200_000, {"Content-Type": "application/json"})
    assert status == 413  # the server's own limit (16 KiB), so the whole body reached it through nginx
    # A reload (`docker compose kill -s HUP nginx`, after editing the template) re-renders nothing and keeps serving.
    stack.compose("kill", "-s", "HUP", "nginx")
    poll(lambda: fetch(stack.port, "/add/2/3")[::2] == (200, b"5"), 15, "an answer after the reload")
    assert "[emerg]" not in stack.logs(nginx) and "[alert]" not in stack.logs(nginx)


def test_every_container_has_memory_and_cpu_limits(stack):
    limits = {"server": (256 * 2**20, 10**9), "nginx": (128 * 2**20, 10**9)}  # docker-compose.yml's defaults
    for service, expected in limits.items():
        for container in stack.containers(service):
            got = stack.inspect(container, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}}")
            assert tuple(map(int, got.split())) == expected, (service, got)


def test_locust_profile_runs_hardened_with_its_ui_on_loopback(stack):
    """The loadtest profile as written (read-only root, no capabilities, limits), with the pinned locust image
    or scripts/docker-setup's stand-in of that version; a swarm through its web UI reaches nginx and every
    answer checks out."""
    pinned = compose_config()["services"]["locust"]["image"]
    assert pinned == LOCUST_IMAGES[0]
    image = pick_image(stack.docker, "LOCUST_IMAGE")
    ui_port = free_port()
    loadtest = dataclasses.replace(stack, env={**stack.env, "LOCUST_IMAGE": image, "LOCUST_PORT": str(ui_port)})
    try:
        # --no-deps: nginx is up already, and `up` of a dependency would scale the server back to 1.
        loadtest.compose("--profile", "loadtest", "up", "-d", "--no-deps", "--wait", "--wait-timeout", "120", "locust")
        (locust,) = loadtest.containers("locust")
        assert loadtest.inspect(locust, "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}}") == \
            'true ["ALL"]'
        assert int(loadtest.inspect(locust, "{{.HostConfig.Memory}}")) == 512 * 2**20
        bindings = json.loads(loadtest.inspect(locust, "{{json .HostConfig.PortBindings}}"))
        assert bindings == {"8089/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(ui_port)}]}
        ui = f"http://127.0.0.1:{ui_port}"

        def answering() -> bool:
            try:
                return http_fetch(ui, "/", timeout=5)[0] == 200
            except OSError:  # published before locust listens: Docker's proxy accepts, then resets
                return False

        poll(answering, 30, "the Locust web UI answering")
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, _, body = http_fetch(ui, "/swarm", "POST", b"user_count=4&spawn_rate=4&host=http://nginx", form)
        assert status == 200 and json.loads(body)["success"], body

        def aggregated() -> dict | None:
            report = json.loads(http_fetch(ui, "/stats/requests")[2])
            (row,) = [r for r in report["stats"] if r["name"] == "Aggregated"]
            return row if row["num_requests"] >= 50 else None

        row = poll(aggregated, 60, "50 requests from the locust container")
        http_fetch(ui, "/stop")
        print(f"locust {pinned.partition(':')[2]} in the hardened container: {row['num_requests']} requests, "
              f"{row['num_failures']} failures")
        assert row["num_failures"] == 0
    finally:
        loadtest.compose("--profile", "loadtest", "rm", "-f", "-s", "locust", check=False)
    assert stack.all_healthy(REPLICAS + 1)  # the rest of the stack as it was


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
    reloads = stack.logs(nginx).count("(SIGHUP) received")
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
    # nginx has to notice (it re-resolves `server` itself: CALC_UPSTREAM's `resolve`).
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
    # ...from the same nginx process that was running before, without a reload.
    assert stack.inspect(nginx, "{{.State.StartedAt}}/{{.RestartCount}}") == nginx_started
    assert stack.logs(nginx).count("(SIGHUP) received") == reloads


def test_down_leaves_nothing_behind(stack):
    stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180)
    label = f"label=com.docker.compose.project={stack.project}"
    assert stack.containers(all_states=True) == []
    assert stack.run_docker("network", "ls", "-q", "--filter", label).stdout.split() == []
    assert stack.run_docker("volume", "ls", "-q", "--filter", label).stdout.split() == []
    with contextlib.suppress(ConnectionError, OSError):
        fetch(stack.port, "/nginx-health", timeout=3)
        pytest.fail("something still answers on the published port")


def test_compose_v1_with_docker_compose_wait():
    """The Compose v1 path (Debian's docker-compose 1.29, docker-compose-wait) still brings up a working stack."""
    docker = docker_engine()
    compose = require_tool("docker-compose", "the Compose v1 path is tested with Debian's docker-compose")
    port = free_port()
    stack = Stack(docker, [compose], f"calctest-v1-{uuid.uuid4().hex[:10]}", compose_env(docker, port), port)
    try:
        stack.compose("up", "-d", "--build", timeout=600)
        stack.wait_with_docker_compose_wait()
        poll(lambda: stack.all_healthy(2), 60, "every container healthy")
        status, headers, body = fetch(port, "/add/2/3")
        assert (status, body) == (200, b"5")
        in_nginx, in_server = poll(lambda: stack.addresses_logged(headers["x-request-id"]), 15, "the request logged")
        assert in_server == in_nginx
        (server,) = stack.containers("server")
        assert stack.inspect(server, "{{.HostConfig.Memory}}") == str(256 * 2**20)
    finally:
        stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180, check=False)
    assert stack.containers(all_states=True) == []


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


def compose_config(**variables: str) -> dict:
    """``docker compose config`` (v2) of docker-compose.yml with every profile, in a clean environment."""
    docker = require_tool("docker", "Compose v2 renders the compose file")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALC_", "NGINX_", "LOCUST_", "SERVER_", "PROMETHEUS_", "COMPOSE_", "PYTHON_IMAGE"))}
    compose = compose_command(docker)
    proc = run([*compose, "-f", str(ROOT / "docker-compose.yml"), "--profile", "loadtest", "--profile", "monitoring",
                "config", "--format", "json"], env={**env, **variables})
    return json.loads(proc.stdout)


def test_server_environment_defaults_match_the_image_and_config():
    """Every CALC_ variable has a default in the compose file, equal to the one the server would use anyway.

    A bare ``CALC_X:`` entry is dropped when the shell does not set it, so a value the image sets (the
    trusted proxy ranges) was lost and the server logged nginx's address instead of the client's.
    """
    from server.config import OPTIONS

    image_env = dict(re.findall(r"(CALC_\w+)=(\S+)", (ROOT / "Dockerfile").read_text()))
    assert "CALC_FORWARDED_ALLOW_IPS" in image_env
    environment = compose_config()["services"]["server"]["environment"]
    assert environment and all(value not in (None, "") for value in environment.values()), environment
    options = {option.env: option for option in OPTIONS}
    deliberate = {"CALC_ACCESS_LOG_EXCLUDE": ("/healthz",),  # compose's own health checks stay out of the log
                  "CALC_DRAIN_DELAY": 2.0}  # the server's default is 0; behind nginx a lame duck helps (issue 23)
    for name, value in environment.items():
        option = options[name]
        expected = option.parse(image_env[name]) if name in image_env else deliberate.get(name, option.default)
        assert option.parse(value) == expected, f"{name}: compose says {value!r}, the server would use {expected!r}"
    # A value from the shell still wins.
    assert compose_config(CALC_THREADS="3")["services"]["server"]["environment"]["CALC_THREADS"] == "3"


def test_limits_binds_and_images_follow_variables():
    services = compose_config()["services"]
    for name, service in services.items():
        assert service.get("mem_limit") and service.get("cpus"), f"{name} has no memory or CPU limit"
        assert service.get("security_opt") == ["no-new-privileges:true"], name
        assert service.get("cap_drop") == ["ALL"] and service.get("read_only") is True, name
    (locust_port,) = services["locust"]["ports"]
    assert locust_port["host_ip"] == "127.0.0.1"  # the Locust web UI has no login
    (nginx_port,) = services["nginx"]["ports"]
    assert nginx_port["host_ip"] == "0.0.0.0"  # nginx is the edge, on every interface by design
    repository, _, tag = services["locust"]["image"].partition(":")
    assert repository == "locustio/locust" and re.fullmatch(r"\d+\.\d+\.\d+", tag), services["locust"]["image"]
    changed = compose_config(SERVER_MEM_LIMIT="300m", SERVER_CPUS="0.5", NGINX_MEM_LIMIT="64m", NGINX_CPUS="2",
                             LOCUST_MEM_LIMIT="1g", LOCUST_CPUS="1.5", LOCUST_BIND="0.0.0.0")["services"]
    assert (changed["server"]["cpus"], changed["nginx"]["cpus"], changed["locust"]["cpus"]) == (0.5, 2, 1.5)
    assert changed["server"]["mem_limit"] == str(300 * 2**20)
    assert changed["nginx"]["mem_limit"] == str(64 * 2**20)
    assert changed["locust"]["mem_limit"] == str(2**30)
    assert changed["locust"]["ports"][0]["host_ip"] == "0.0.0.0"


# compose-lint findings above "low" that are deliberate; docs/compose-hardening.md explains each.
DELIBERATE = {("CL-0005", "nginx"), ("CL-0019", "nginx"), ("CL-0019", "locust"), ("CL-0019", "prometheus")}


def compose_lint(path: Path) -> list[dict]:
    """compose-lint's findings for a compose file, in a clean environment (its defaults, not this shell's)."""
    if importlib.util.find_spec("compose_lint") is None:
        skip_or_fail("compose-lint is not installed (requirements-test.txt has it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NGINX_", "LOCUST_", "COMPOSE_"))}
    proc = run([sys.executable, "-m", "compose_lint", "check", "--format", "json", "--fail-on", "critical",
                str(path)], check=False, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert not report["errors"], report["errors"]
    return report["findings"]


def above_low(findings: list[dict]) -> set[tuple[str, str]]:
    return {(f["rule_id"], f["service"]) for f in findings if f["severity"].lower() not in ("low", "info")}


def test_compose_lint_finds_nothing_above_low_but_what_is_explained(tmp_path):
    findings = compose_lint(ROOT / "docker-compose.yml")
    print(f"compose-lint: {len(findings)} findings; above low: {sorted(above_low(findings))}")
    assert above_low(findings) <= DELIBERATE, sorted(above_low(findings) - DELIBERATE)
    # The check has teeth: the same file with nginx's capabilities left in place is reported.
    weakened = (ROOT / "docker-compose.yml").read_text().replace(
        "    cap_drop:\n      - ALL\n    cap_add:\n", "    cap_add:\n", 1)
    assert weakened != (ROOT / "docker-compose.yml").read_text()
    (tmp_path / "docker-compose.yml").write_text(weakened)
    assert ("CL-0006", "nginx") in above_low(compose_lint(tmp_path / "docker-compose.yml"))
    docs = (ROOT / "docs" / "compose-hardening.md").read_text()
    for rule, service in DELIBERATE:
        assert rule in docs and service in docs

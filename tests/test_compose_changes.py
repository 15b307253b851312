"""Issue 23: the compose stack changes under load without losing or stalling a request.

A stack of its own (three server replicas behind nginx, a unique project name, nginx on a free
loopback port) and the load of the issue's table: loadtest/steady_clients.py's 6 keep-alive
clients alternating GET /add and POST /calc at about 250 requests a second, without retries,
reconnecting like urllib3 (which they use). Each test makes one change while that load runs:

* scale up (3 to 5) and scale down (5 to 2), with ``docker compose up --scale``;
* ``docker restart`` of one replica, and ``docker kill -s KILL`` of one (a crash);
* a rolling update of the server image with scripts/compose-rolling-update;
* a replica coming back at another address, which nginx must pick up and send traffic to.

and asserts, for the requests that began from just before the change until SETTLE seconds after it
completed (longer than nginx's fail_timeout, so a departed replica that nginx would try again is
caught): none failed, and nginx never lost 250 ms (loadtest.steady_clients.BOUND) finding a
replica for a request (its JSON access log, joined on X-Request-ID: failed tries such as connect
timeouts to departed addresses, plus connecting to the replica that answered). That is the stack's share of the
latency bound. End to end, the clients' own figure is printed in the table and asserted only with
STRICT_LATENCY=1: on a 2-core machine shared with other work, a replica starved of CPU can take
longer than 250 ms to compute 2 + 3, change or no change (the baseline row shows how often).

Each test prints its row of the issue's table: requests, failed, over 250 ms, slowest (client
side), then requests nginx retried on another replica and nginx's worst routing time. On
575c707 (nginx resolving `server` at start and reloaded by a watcher, no drain delay, a 1 s connect
timeout) the scale-up, scale-down, restart, rolling-update and new-address tests fail (the kill
test passes there too); docs/deployment.md has both tables.

Bounded in time: the stack comes up once (about half a minute), each change is watched for
SETTLE seconds after it completes; the module takes about three minutes. The stack is taken
down with its volumes and image at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from harness import ROOT
from test_compose import Stack, compose_command, compose_env, docker_engine, free_port, poll, run

sys.path.insert(0, str(ROOT))
from loadtest.steady_clients import BOUND, Sample, SteadyLoad

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPLICAS = 3
SETTLE = 11.0  # seconds of load watched after a change completed: longer than nginx's fail_timeout (10 s)
WARM = 100  # requests answered before a change begins


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    docker = docker_engine()
    port = free_port()
    env = compose_env(docker, port)
    stack = Stack(docker, compose_command(docker), f"calcchg-{uuid.uuid4().hex[:10]}", env, port)
    try:
        stack.compose("up", "-d", "--build", "--wait", "--wait-timeout", "180", "--scale", f"server={REPLICAS}",
                      timeout=600)
        yield stack
    finally:
        stack.remove_helpers()
        stack.compose("down", "-v", "--remove-orphans", "--rmi", "local", timeout=180, check=False)


@dataclass(frozen=True)
class ProxyView:
    """nginx's own account of the window's requests (its JSON access log, joined on X-Request-ID)."""

    logged: int  # the window's requests found in nginx's log
    retried: int  # requests nginx sent to more than one replica (each went on after a failure)
    worst_overhead: float  # seconds nginx lost finding a replica for one request (routing_time)
    worst_entry: dict  # nginx's log entry of that request


def _seconds(values: str) -> list[float]:
    return [float(value) if value not in ("-", "") else 0.0 for value in values.split(", ")]


def routing_time(entry: dict) -> float:
    """What nginx lost finding a replica for one request: every failed try whole (a connect timeout to a
    departed address, a refused or reset connection), plus connecting to the replica that answered.

    Not request_time minus the answer's time: that also counts reading the request from the client,
    which on a busy machine waits for Docker's port proxy and says nothing about the stack."""
    tries = _seconds(entry["upstream_response_time"])
    connects = _seconds(entry["upstream_connect_time"])
    return sum(tries[:-1]) + (connects[-1] if len(connects) == len(tries) else 0.0)


def proxy_view(stack: Stack, since: str, samples: list[Sample]) -> ProxyView:
    (nginx,) = stack.containers("nginx")
    proc = stack.run_docker("logs", "--since", since, nginx, timeout=60)
    entries = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            entries[entry["request_id"]] = entry
    logged = retried = 0
    worst = 0.0
    worst_entry: dict = {}
    for sample in samples:
        entry = entries.get(sample.request_id)
        if entry is None:
            continue
        logged += 1
        tries = entry["upstream_addr"].split(", ")
        retried += len(tries) > 1
        overhead = routing_time(entry)
        if overhead > worst:
            worst, worst_entry = overhead, entry
    return ProxyView(logged, retried, worst, worst_entry)


class Watched:
    """The steady load around one change: warmed up before it, watched for SETTLE seconds after it."""

    def __init__(self, stack: Stack, name: str) -> None:
        self.stack, self.name = stack, name
        self.load = SteadyLoad("127.0.0.1", stack.port)
        self.began = 0.0
        self.since = ""

    def __enter__(self) -> Watched:
        self.since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 2))
        self.load.start()
        poll(lambda: self.load.count() >= WARM, 30, f"{WARM} requests before the change")
        self.began = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            settled = time.monotonic() + SETTLE
            poll(lambda: time.monotonic() >= settled, SETTLE + 5, "the stack to settle under load")
        self.load.stop()

    def check(self) -> None:
        """Print the table row, then assert: nothing failed, and nothing was slow on the proxy's account."""
        summary = self.load.summary(self.began)
        samples = [s for s in self.load.samples() if s.started >= self.began]
        view = proxy_view(self.stack, self.since, samples)
        print(f"| {self.name} | {summary.requests} | {summary.failed} | {summary.slow} | "
              f"{summary.slowest * 1000:.0f} ms | {view.retried} | {view.worst_overhead * 1000:.0f} ms |")
        for error in summary.errors:
            print(f"    {error}")
        if view.worst_overhead > 0.2:
            print(f"    nginx's slowest routing: {view.worst_entry}")
        assert summary.requests >= 500, summary  # the load really ran through the change
        assert summary.failed == 0, summary.errors
        assert view.logged == summary.requests, "requests missing from nginx's log"
        # The stack's own part of the latency bound: nginx never lost 250 ms finding a replica for a
        # request (connect timeouts to departed addresses, tries that failed slowly).
        assert view.worst_overhead < BOUND, (f"nginx lost {view.worst_overhead * 1000:.0f} ms finding a replica: "
                                             f"{view.worst_entry}")
        # End to end, every request within the bound, unless the machine itself was the cause: a replica
        # slow to compute (a CPU-starved 2-core machine) is not the change. STRICT_LATENCY=1 counts those too.
        slow = [s for s in samples if not s.error and s.took > BOUND]
        if os.environ.get("STRICT_LATENCY") == "1":
            assert not slow, f"{len(slow)} answers over 250 ms, the slowest {summary.slowest * 1000:.0f} ms"


def scale(stack: Stack, replicas: int) -> None:
    stack.compose("up", "-d", "--no-deps", "--no-recreate", "--wait", "--wait-timeout", "120",
                  "--scale", f"server={replicas}", "server", timeout=300)


def ensure_replicas(stack: Stack, count: int = REPLICAS) -> None:
    """Each test starts from the same stack, whatever the one before it left (a failed test included)."""
    if not healthy_servers(stack, count):
        scale(stack, count)
        poll(lambda: healthy_servers(stack, count), 60, f"{count} healthy replicas")


def healthy_servers(stack: Stack, count: int) -> bool:
    ids = stack.containers("server")
    return len(ids) == count and all(
        stack.inspect(c, "{{.State.Status}}/{{.State.Health.Status}}") == "running/healthy" for c in ids)


def test_baseline_without_a_change(stack):
    """The same load with nothing changing: the machine's own noise, for comparison with the rows below."""
    with Watched(stack, "nothing (baseline)") as watched:
        pass
    watched.check()


def test_scale_up_under_load(stack):
    ensure_replicas(stack)
    with Watched(stack, f"`--scale server=5` (from {REPLICAS})") as watched:
        scale(stack, 5)
    watched.check()
    assert len(stack.containers("server")) == 5


def test_scale_down_under_load(stack):
    ensure_replicas(stack, 5)
    with Watched(stack, "`--scale server=2` (from 5)") as watched:
        scale(stack, 2)
    watched.check()
    assert len(stack.containers("server")) == 2


def test_restart_one_replica_under_load(stack):
    ensure_replicas(stack)
    victim = stack.containers("server")[0]
    with Watched(stack, "`docker restart` one replica") as watched:
        stack.run_docker("restart", "-t", "40", victim, timeout=120)
        poll(lambda: healthy_servers(stack, REPLICAS), 60, "every replica healthy again")
    watched.check()


def test_kill_one_replica_under_load(stack):
    ensure_replicas(stack)
    victim = stack.containers("server")[0]
    with Watched(stack, "`docker kill -s KILL` one replica") as watched:
        stack.run_docker("kill", "-s", "KILL", victim)
        # The restart policy may bring it back; either way the rest must carry the load meanwhile.
        poll(lambda: stack.inspect(victim, "{{.State.Running}}") == "false" or
             stack.inspect(victim, "{{.RestartCount}}") != "0", 30, "the replica gone or restarted")
        if stack.inspect(victim, "{{.State.Running}}") != "true":
            stack.run_docker("start", victim)
        poll(lambda: healthy_servers(stack, REPLICAS), 60, "every replica healthy again")
    watched.check()


def test_rolling_update_of_the_server_image_under_load(stack):
    ensure_replicas(stack)
    before = {c: stack.inspect(c, "{{.Image}}") for c in stack.containers("server")}
    # A new image under the same tag: the same code with a label that changes its id, as a rebuild after a
    # change would. The script is told not to build (ROLLING_BUILD=0): the image is there already.
    image = stack.inspect(next(iter(before)), "{{.Config.Image}}")
    built = subprocess.run([stack.docker, "build", "-q", "-t", image, "-"], capture_output=True, text=True,
                           timeout=120, input=f"FROM {image}\nLABEL calctest.revision={uuid.uuid4().hex}\n",
                           env={**stack.env, "DOCKER_BUILDKIT": "0"})
    assert built.returncode == 0, built.stderr
    new_image = stack.inspect(image, "{{.Id}}")
    assert new_image not in before.values()
    env = {**stack.env, "COMPOSE": " ".join(stack.compose_cmd), "ROLLING_BUILD": "0"}
    with Watched(stack, "rolling update (scripts/compose-rolling-update)") as watched:
        run([str(ROOT / "scripts" / "compose-rolling-update"), "-f", str(ROOT / "docker-compose.yml"),
             "-p", stack.project], timeout=300, env=env)
    watched.check()
    after = {c: stack.inspect(c, "{{.Image}}") for c in stack.containers("server")}
    assert len(after) == REPLICAS and not set(after) & set(before), (before, after)
    assert set(after.values()) == {new_image}


def test_nginx_picks_up_a_replica_at_a_new_address_under_load(stack):
    ensure_replicas(stack)
    (nginx,) = stack.containers("nginx")
    nginx_started = stack.inspect(nginx, "{{.State.StartedAt}}/{{.RestartCount}}")
    victim = stack.containers("server")[0]
    old_address = stack.address(victim)
    with Watched(stack, "a replica back at a new address") as watched:
        stack.run_docker("stop", "-t", "40", victim, timeout=120)
        # Another container takes the freed address (Docker hands out the lowest free one), so the
        # replica comes back at another one.
        stack.run_docker("run", "-d", "--rm", "--label", f"calctest={stack.project}", "--network", stack.network,
                         stack.env["PYTHON_IMAGE"], "sleep", "300")
        stack.run_docker("start", victim)
        poll(lambda: healthy_servers(stack, REPLICAS), 60, "every replica healthy again")
        new_address = stack.address(victim)
        assert new_address != old_address
        # nginx sends it requests at its new address.
        poll(lambda: f'"upstream_addr":"{new_address}:8000"' in stack.run_docker("logs", "--tail", "300", nginx).stdout,
             30, f"nginx sending requests to {new_address}")
    watched.check()
    assert stack.inspect(nginx, "{{.State.StartedAt}}/{{.RestartCount}}") == nginx_started  # no restart
    stack.remove_helpers()


def test_the_stack_is_whole_afterwards(stack):
    """Nothing left over: the stack still answers, every replica healthy."""
    stack.remove_helpers()
    poll(lambda: healthy_servers(stack, REPLICAS), 60, "every replica healthy")
    status = stack.compose("exec", "-T", "nginx", "curl", "-fsS", "http://127.0.0.1/add/2/3").stdout
    assert json.loads(status) == 5

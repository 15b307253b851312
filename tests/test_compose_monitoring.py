"""The `monitoring` profile for real: Prometheus finds every server replica by DNS and counts what nginx passed on.

A stack of its own (unique project name, two server replicas, nginx and Prometheus on free
loopback ports), brought up with ``--profile monitoring``; taken down with its volumes at the
end whatever happened. The counts come from Prometheus's HTTP API, the expectations from the
requests this test sent through nginx.
"""

from __future__ import annotations

import json
import os
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from harness import ROOT, require_tool
from test_compose import (
    Stack,
    compose_command,
    compose_config,
    compose_env,
    docker_engine,
    fetch,
    free_port,
    poll,
    run,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

REPLICAS = 2


@pytest.fixture(scope="module")
def monitored() -> Iterator[tuple[Stack, int]]:
    """(the stack, Prometheus's published port)."""
    docker = docker_engine()
    port, prometheus_port = free_port(), free_port()
    env = compose_env(docker, port)
    env.update({"PROMETHEUS_PORT": str(prometheus_port), "PROMETHEUS_BIND": "127.0.0.1"})
    stack = Stack(docker, compose_command(docker), f"calcmon-{uuid.uuid4().hex[:10]}", env, port)
    try:
        stack.compose("--profile", "monitoring", "up", "-d", "--build", "--wait", "--wait-timeout", "180",
                      "--scale", f"server={REPLICAS}", timeout=600)
        yield stack, prometheus_port
    finally:
        stack.compose("--profile", "monitoring", "down", "-v", "--remove-orphans", "--rmi", "local",
                      timeout=180, check=False)


def api(port: int, path: str, **params: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=10) as response:
        document = json.load(response)
    assert document["status"] == "success", document
    return document["data"]


def query(port: int, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant query's vector as {labels: value}."""
    data = api(port, "query", query=promql)
    return {tuple(sorted(item["metric"].items())): float(item["value"][1]) for item in data["result"]}


def healthy_targets(stack: Stack, port: int, replicas: int) -> dict[str, str] | None:
    """{target address: health} once Prometheus scrapes exactly the server replicas, all up."""
    targets = {t["labels"]["instance"]: t["health"] for t in api(port, "targets", state="active")["activeTargets"]
               if t["labels"]["job"] == "calc-server"}
    expected = {f"{stack.address(c)}:9100" for c in stack.containers("server")}
    if len(expected) == replicas and set(targets) == expected and set(targets.values()) == {"up"}:
        return targets
    return None


def test_prometheus_scrapes_every_replica_and_counts_what_was_sent(monitored):
    stack, port = monitored
    targets = poll(lambda: healthy_targets(stack, port, REPLICAS), 60, "every replica a healthy target")
    assert len(targets) == REPLICAS

    # Method/status pairs the health checks do not make (they are GET 200): a fresh stack starts them at 0.
    posts, missing = 24, 9
    for i in range(posts):
        body = json.dumps({"op": "add", "arg1": i, "arg2": 1}).encode()
        status, _, answer = fetch(stack.port, "/calc", "POST", body, {"Content-Type": "application/json"})
        assert (status, json.loads(answer)["result"]) == (200, i + 1)
    for i in range(missing):
        assert fetch(stack.port, f"/no/such/{i}")[0] == 404

    def counted() -> dict | None:
        totals = query(port, 'sum by (method, status) (calc_server_requests_total{method!="GET"} '
                             'or calc_server_requests_total{status="404"})')
        seen = {dict(labels)["method"] + " " + dict(labels)["status"]: v for labels, v in totals.items()}
        return seen if seen == {"POST 200": posts, "GET 404": missing} else None

    poll(counted, 60, f"Prometheus counting {posts} POST 200 and {missing} GET 404")
    per_replica = query(port, 'calc_server_requests_total{method="POST"}')
    assert len(per_replica) == REPLICAS, per_replica  # nginx spread them: both replicas answered some
    assert sum(per_replica.values()) == posts
    workers = query(port, "calc_server_workers")
    assert sorted(dict(labels)["instance"] for labels in workers) == sorted(targets)
    histogram = query(port, 'sum(calc_server_request_duration_seconds_count{job="calc-server"})')
    assert next(iter(histogram.values())) >= posts + missing


def test_each_target_is_labelled_with_its_replicas_container_name(monitored):
    """Issue 23: the container name (as `docker ps` shows it) next to the address, on the target and its series."""
    stack, port = monitored
    poll(lambda: healthy_targets(stack, port, len(stack.containers("server"))), 60, "every replica a healthy target")
    names = {f"{stack.address(c)}:9100": stack.inspect(c, "{{.Name}}").lstrip("/") for c in stack.containers("server")}
    labelled = {t["labels"]["instance"]: t["labels"].get("container")
                for t in api(port, "targets", state="active")["activeTargets"] if t["labels"]["job"] == "calc-server"}
    print(f"targets: {labelled}")
    assert labelled == names
    assert all(name.startswith(f"{stack.project}-server-") for name in names.values())
    series = poll(lambda: query(port, "calc_server_workers") or None, 30, "a scraped series")
    assert {dict(labels)["container"] for labels in series} == set(names.values())


def test_a_new_replica_is_found_without_editing_anything(monitored):
    stack, port = monitored
    stack.compose("--profile", "monitoring", "up", "-d", "--no-recreate", "--wait", "--wait-timeout", "180",
                  "--scale", f"server={REPLICAS + 1}", timeout=300)
    started = time.monotonic()
    poll(lambda: healthy_targets(stack, port, REPLICAS + 1), 60, "the third replica a healthy target")
    print(f"third replica scraped {time.monotonic() - started:.1f} s after it was healthy")


def test_metrics_port_stays_on_the_internal_network():
    config = compose_config()["services"]
    server = config["server"]
    assert "ports" not in server  # neither the application nor the metrics port is published
    assert "9100" in server["expose"]
    assert server["environment"]["CALC_METRICS_BIND"] == "0.0.0.0:9100"
    assert compose_config(CALC_METRICS_BIND="")["services"]["server"]["environment"]["CALC_METRICS_BIND"] == ""


def test_monitoring_profile_is_hardened_and_pinned():
    docker = require_tool("docker", "Compose v2 renders the compose file")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CALC_", "NGINX_", "LOCUST_", "SERVER_", "COMPOSE_", "PROMETHEUS_"))}
    proc = run([*compose_command(docker), "-f", str(ROOT / "docker-compose.yml"), "--profile", "monitoring",
                "config", "--format", "json"], env=env)
    prometheus = json.loads(proc.stdout)["services"]["prometheus"]
    repository, _, tag = prometheus["image"].partition(":")
    assert repository == "prom/prometheus" and tag.startswith("v") and tag != "latest"
    assert prometheus["profiles"] == ["monitoring"]
    (published,) = prometheus["ports"]
    assert published["host_ip"] == "127.0.0.1" and published["target"] == 9090  # no login: this machine only
    assert prometheus["read_only"] is True and prometheus["cap_drop"] == ["ALL"]
    assert prometheus["security_opt"] == ["no-new-privileges:true"]
    assert prometheus.get("mem_limit") and prometheus.get("cpus")
    assert any(v["target"] == "/etc/prometheus/prometheus.yml" and v["read_only"] for v in prometheus["volumes"])

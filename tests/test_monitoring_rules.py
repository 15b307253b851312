"""The monitoring profile's recording and alerting rules (monitoring/rules/), judged by Prometheus itself.

- ``promtool check rules`` / ``check config``: the rules and the config that loads them are valid;
- ``promtool test rules`` runs the unit tests in monitoring/tests/: each alert fires on the series
  it is about, at the time its ``for`` says, with its labels and text, and stays quiet otherwise;
- every metric a rule reads is one a real server exports (a scrape read with prometheus_client's
  parser), so a renamed metric cannot leave an alert that never fires;
- a real Prometheus scrapes a real server with these rules loaded: every rule evaluates without
  error and the connection ratio is what the server reports;
- the compose stack mounts the rules where prometheus.yml looks for them, and docs/metrics.md
  explains every alert.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from harness import ROOT, fetch, require_tool, wait_until
from prometheus_client.parser import text_string_to_metric_families

RULES = ROOT / "monitoring" / "rules"
RULE_FILES = sorted(RULES.glob("*.yml"))
UNIT_TESTS = sorted((ROOT / "monitoring" / "tests").glob("*.yml"))
METRICS_LINE = r"metrics on (http://\S+)/metrics"


def rules() -> list[dict]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", "Debian's prometheus package ships it; scripts/ci-setup installs it")
    return subprocess.run([tool, *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_rules_and_the_config_that_loads_them_are_valid():
    assert RULE_FILES
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "config", "monitoring/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_every_alert_fires_when_it_should_and_only_then():
    """promtool's unit tests; each alert must have a case where it fires and one where it does not."""
    assert UNIT_TESTS
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    firing, quiet = set(), set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"


def test_rules_read_only_metrics_the_server_exports(server_factory):
    server = server_factory("--metrics-bind", "127.0.0.1:0", "--no-access-log", "--workers", "2")
    url = server.wait_for_line(METRICS_LINE).group(1)
    fetch(server.url, "/add/2/3")

    def counted() -> bytes | None:  # workers publish their counts 4 times a second
        status, _, body = fetch(url, "/metrics")
        return body if status == 200 and b"calc_server_requests_total{" in body else None

    body = wait_until(counted, 10, "the request in the scrape")
    exported = {"up"}  # Prometheus's own, per target
    for family in text_string_to_metric_families(body.decode()):
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    used = set()
    for rule in rules():
        names = re.findall(r"(?<![\w:])([a-z_][a-z0-9_]*(?::[a-z0-9_]+)*)\s*(?=[{\[)]|\s|$|>|/|\+)", rule["expr"])
        used.update(name for name in names if name.startswith(("calc_server", "process_", "up", "instance:")))
    assert "calc_server_connections_limit" in used
    assert used - exported - recorded == set()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prometheus_evaluates_every_rule_against_a_real_server(server_factory, tmp_path: Path):
    prometheus = require_tool("prometheus", "Debian's prometheus package; scripts/ci-setup installs it")
    server = server_factory("--metrics-bind", "127.0.0.1:0", "--no-access-log", "--max-connections", "40")
    target = server.wait_for_line(METRICS_LINE).group(1).removeprefix("http://")
    held = [socket.create_connection(server.address) for _ in range(10)]  # 10 of 40: a ratio of 0.25
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "calc-server", "static_configs": [{"targets": [target]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api/v1"

    def get(path: str) -> dict:
        with urllib.request.urlopen(api + path, timeout=5) as answer:
            return json.load(answer)["data"]

    def ratio() -> list | None:
        try:
            found = get("/query?query=instance:calc_server_connections:ratio")["result"]
        except OSError:
            return None
        return found or None

    try:
        (sample,) = wait_until(ratio, 30, "the recording rule's first value")
        assert sample["metric"]["instance"] == target and float(sample["value"][1]) == pytest.approx(0.25)
        groups = get("/rules")["groups"]
        evaluated = [rule for group in groups for rule in group["rules"]]
        assert len(evaluated) == len(rules())
        for rule in evaluated:
            assert rule["health"] == "ok" and not rule.get("lastError"), rule
        # Before the first scrape "no replica answers" is true and pending; once the server is
        # scraped, a healthy server has no alert pending or firing.
        wait_until(lambda: not get("/alerts")["alerts"], 15, "no alert pending for a healthy server")
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=20)


def test_the_monitoring_profile_mounts_the_rules_where_prometheus_looks():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    prometheus = compose["services"]["prometheus"]
    config_mount = next(v for v in prometheus["volumes"] if v.endswith("/prometheus.yml:ro"))
    config_dir = Path(config_mount.split(":")[1]).parent
    mounts = {Path(v.split(":")[1]): v.split(":")[0] for v in prometheus["volumes"] if v.startswith("./")}
    patterns = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())["rule_files"]
    for pattern in patterns:
        in_container = config_dir / pattern
        source = mounts.get(in_container.parent)
        assert source is not None, (pattern, mounts)
        assert sorted((ROOT / source).glob(in_container.name)) == RULE_FILES


def test_the_metrics_page_explains_every_alert():
    """Each alert has a section in docs/metrics.md that says what it means and what to do."""
    text = (ROOT / "docs" / "metrics.md").read_text()
    for rule in rules():
        if "alert" in rule:
            match = re.search(rf"^#### `{rule['alert']}`\n(.*?)(?=^#|\Z)", text, re.DOTALL | re.MULTILINE)
            assert match, rule["alert"]
            assert "What to do" in match[1], rule["alert"]

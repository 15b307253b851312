"""The benchmark harness (scripts/bench -> loadtest/bench/): a tiny real run, and where results go."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from harness import ROOT, require_tool

sys.path.insert(0, str(ROOT))
from loadtest.bench.main import ALL_SERVERS, parse_args, partial_reasons
from loadtest.bench.report import render, write_results
from loadtest.bench.workloads import WORKLOADS


def _files(path):
    return sorted(p.relative_to(path) for p in path.rglob("*")) if path.exists() else []


@pytest.mark.slow
@pytest.mark.nginx
def test_tiny_run_measures_every_workload_and_writes_nothing():
    """One server, 1 s per measurement, --no-write: every direct workload, the template table and the
    metrics rows get a measurement with right answers, and nothing appears under results/."""
    require_tool("wrk", "the benchmark drives the servers with wrk")
    require_tool("nginx", "the template table runs nginx natively")
    before = _files(ROOT / "results")
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--servers", "calc-server", "--duration", "1", "--warmup", "0",
         "--retries", "0", "--skip-idle", "--skip-nginx", "--no-write", "--ref", "worktree", "--connections", "4",
         "--server-cpu", "none", "--client-cpu", "none", "--proxy-cpu", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout
    assert "answers ok" in text
    for workload in WORKLOADS.values():
        assert f"## Direct, one core: {workload.title}" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| calc-server | ")]
    # one per workload, plus the two TLS rows when the server has --certfile
    tls_rows = 2 if "TLS: skipping calc-server" not in text else 0
    assert len(table_rows) == len(WORKLOADS) + tls_rows, table_rows
    assert all("| ok |" in line for line in table_rows), table_rows
    template_rows = [line for line in text.splitlines() if line.startswith("| nginx template → calc-server |")]
    assert len(template_rows) == 2 and all("| ok |" in line and "| — |" not in line for line in template_rows)
    # measured when the server has --metrics-bind, else skipped with the reason
    assert "| calc-server, metrics on |" in text or "Not run: this server has none of --metrics-bind" in text
    assert "Partial run" in text
    assert _files(ROOT / "results") == before


def _report(tmp_path, argv):
    args = parse_args([*argv, "--out", str(tmp_path)])
    data = {"rps": 1000.0, "p50_us": 100, "p99_us": 900, "status": 0, "connect": 0, "read": 0, "write": 0,
            "timeout": 0, "socket_errors": 0, "requests": 10000}
    meta = {"date": "today", "commit": "abc", "source": "test", "machine": "m", "versions": "v", "rounds": 1,
            "load_before": "0", "load_after": "0", "connections": 50, "threads": 8, "idle": 0, "noise": 0.1,
            "retries": 2, "workloads": args.workloads, "partial": "; ".join(partial_reasons(args)), "server_cpu": "0",
            "client_cpu": "1", "proxy_cpu": "1", "settings": "s"}
    report = {"meta": meta, "direct": {"calc-server": dict.fromkeys(args.workloads, data)}, "proxied": {},
              "template": {}, "tls": {}, "metrics": {}, "idle": {}, "answers": {"calc-server": "ok"}, "skipped": {}}
    return args, report


@pytest.mark.parametrize("argv", [["--servers", "calc-server"], ["--skip-idle"], ["--duration", "3"],
                                  ["--workloads", "get"], ["--skip-tls"]])
def test_partial_run_leaves_latest_alone(tmp_path, argv):
    args, report = _report(tmp_path, argv)
    assert partial_reasons(args)
    (tmp_path / "latest.md").write_text("published\n")
    written = write_results(report, render(report)[0], tmp_path)
    assert (tmp_path / "latest.md").read_text() == "published\n"
    assert written and all(p.name.startswith("partial-") for p in written)
    assert "Partial run" in written[0].read_text()
    assert json.loads(next(p for p in written if p.suffix == ".json").read_text())["meta"]["partial"]


def test_full_run_replaces_latest(tmp_path):
    args, report = _report(tmp_path, [])
    assert args.servers == list(ALL_SERVERS) and partial_reasons(args) == []
    (tmp_path / "latest.md").write_text("published\n")
    written = write_results(report, render(report)[0], tmp_path)
    assert (tmp_path / "latest.md").read_text().startswith("# Latest benchmark")
    assert {p.name.split("-")[0] for p in written} >= {"bench", "latest.md"}


def test_tls_cost_reports_the_servers_share_of_a_handshake_and_a_request(tls_certs):
    """loadtest.tls_cost runs real TLS 1.3 handshakes and keep-alive exchanges (memory BIOs, the test CA's
    certificate) and prints the server's CPU for each, with what was negotiated."""
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.tls_cost", "--certfile", str(tls_certs.server_cert), "--keyfile",
         str(tls_certs.server_key), "--handshakes", "20", "--requests", "200", "--rounds", "2", "--tickets", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "negotiated TLSv1.3 " in text and "1 session tickets per handshake" in text
    handshake = float(re.search(r"server CPU per handshake: (\d+) us \(median of 2 rounds of 20: ", text)[1])
    request = float(re.search(r"server CPU per keep-alive request: ([\d.]+) us", text)[1])
    assert handshake > 0 and request > 0


def test_tls_cost_refuses_half_a_certificate(tls_certs):
    out = subprocess.run([sys.executable, "-m", "loadtest.tls_cost", "--certfile", str(tls_certs.server_cert)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "give both --certfile and --keyfile" in out.stderr

"""One measurement: a wrk run (after a warm-up) with the server's peak memory and threads, redone
when other work on the machine took too much of a pinned CPU meanwhile."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .procs import ROOT, UsageSampler, pinned, single_cpu
from .servers import Target

LUA = ROOT / "loadtest" / "wrk" / "bench.lua"


class Meter:
    def __init__(self, args: argparse.Namespace, logs: Path) -> None:
        self.args = args
        self.logs = logs

    def wrk(self, url: str, mode: str, connections: int, seconds: int, label: str) -> dict[str, Any]:
        argv = pinned(self.args.client_cpu, [
            shutil.which("wrk") or "wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s",
            "--timeout", "5s", "--latency", "-s", str(LUA), url, "--", mode])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, cwd=ROOT)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", label)
        (self.logs / f"wrk-{safe}.log").write_text("$ " + " ".join(argv) + "\n" + out.stdout + out.stderr)
        match = re.search(r"^BENCH-JSON (\{.*\})$", out.stdout, re.M)
        if out.returncode != 0 or not match:
            raise RuntimeError(f"wrk failed ({out.returncode}): {(out.stderr or out.stdout)[-300:]}")
        data = json.loads(match.group(1))
        data["rps"] = data["requests"] / (data["duration_us"] / 1e6) if data["duration_us"] else 0.0
        data["socket_errors"] = data["connect"] + data["read"] + data["write"] + data["timeout"]
        return data

    def measure(self, target: Target, mode: str, label: str, usage_of: Target | None = None,
                client_pids: tuple[int, ...] = (), connections: int | None = None) -> dict[str, Any]:
        """A wrk run after a warm-up, with the peak RSS/threads of ``usage_of`` (default: the target).

        When other processes took more than --noise of either pinned CPU meanwhile, the measurement is
        repeated (up to --retries times) and the least disturbed attempt is kept.
        """
        if not target.up:
            return {"error": target.error or "not running"}
        watched = (usage_of or target).proc
        assert watched is not None
        conns = connections or self.args.connections
        attempts: list[dict[str, Any]] = []
        try:
            for attempt in range(1 + self.args.retries):
                if self.args.warmup > 0:
                    self.wrk(target.url, mode, conns, self.args.warmup, f"{label}-warmup")
                with UsageSampler(watched.pid, single_cpu(self.args.server_cpu), single_cpu(self.args.client_cpu),
                                  client_pids) as usage:
                    data = self.wrk(target.url, mode, conns, self.args.duration,
                                    label if attempt == 0 else f"{label}-retry{attempt}")
                data["rss_mib"], data["threads"] = usage.peak_rss, usage.peak_threads
                data["other_cpu"], data["other_client_cpu"] = usage.other_cpu, usage.other_client_cpu
                data["noise"] = max(usage.other_cpu or 0.0, usage.other_client_cpu or 0.0)
                data["connections"] = conns
                attempts.append(data)
                if data["noise"] <= self.args.noise:
                    break
                print(f"    (others used {data['noise']:.0%} of a pinned CPU during {label}; "
                      f"{'measuring again' if attempt < self.args.retries else 'keeping the quietest'})")
        except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
            if not attempts:
                return {"error": str(exc)[:300]}
        best = min(attempts, key=lambda d: d["noise"])
        best["attempts"] = len(attempts)
        return best


def brief(data: dict[str, Any]) -> str:
    if "error" in data:
        return f"ERROR {data['error'][:150]}"
    return (f"{data['rps']:>10,.0f} req/s  p50 {data['p50_us'] / 1000:.2f} ms  p99 {data['p99_us'] / 1000:.2f} ms  "
            f"non-2xx {data['status']}  socket errors {data['socket_errors']}")

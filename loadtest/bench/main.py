"""The run: which servers and tables, in which order, and the command line.

Every measurement of a round runs in the same invocation, so the ratios compare like with like on a
noisy machine; with ``--rounds N`` the rounds are interleaved (target order rotated each round) and
the medians are reported. Servers are started once per application (the calculator; the Flask +
1 MiB app) and stopped before the next group, the TLS and metrics rows and the idle-connection run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path
from typing import Any

from .measure import Meter, brief
from .procs import ROOT, Proc, cpu_set, pinned, proc_usage, raise_nofile, signals_raise, wait_quiet
from .report import loadavg, machine, render, summarize, tool_versions, write_results
from .servers import OURS, Servers, Target
from .workloads import BENCH_APP, CALC_APP, DEFAULT_WORKLOADS, PROXIED_WORKLOADS, WORKLOADS

HOLDER = ROOT / "loadtest" / "idle_holder.py"
ALL_SERVERS = (OURS, "gunicorn", "waitress", "granian", "nginx")
TLS_SERVERS = (OURS, "granian", "gunicorn")  # waitress has no TLS; the fixed nginx is not a WSGI server
METRICS_FLAGS = ("--metrics-bind", "--metrics-address", "--metrics-listen", "--metrics-port")
Samples = dict[str, dict[str, list[dict[str, Any]]]]


def rotations(items: list[str], round_index: int) -> list[str]:
    shift = round_index % len(items) if items else 0
    return items[shift:] + items[:shift]


def partial_reasons(args: argparse.Namespace) -> list[str]:
    """Why this run must not replace the published results (empty for a full run)."""
    reasons = []
    if list(args.servers) != list(ALL_SERVERS):
        reasons.append(f"servers {','.join(args.servers)}")
    if list(args.workloads) != list(DEFAULT_WORKLOADS):
        reasons.append(f"workloads {','.join(args.workloads)}")
    reasons += [f"--skip-{what}" for what in ("nginx", "template", "tls", "metrics", "idle")
                if getattr(args, f"skip_{what}")]
    if args.duration < 10 or args.warmup < 2:
        reasons.append(f"{args.duration} s measurements after {args.warmup} s warm-up (full: 10 s after 2 s)")
    if args.idle < 10000 and not args.skip_idle:
        reasons.append(f"{args.idle} idle connections")
    if args.app != CALC_APP:
        reasons.append(f"app {args.app}")
    return reasons


def run(args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    source, commit, source_text = export_source(args.ref, logs / "src")
    servers, meter = Servers(args, logs, source), Meter(args, logs)
    partial = partial_reasons(args)
    meta = {"date": dt.datetime.now().strftime("%Y-%m-%d %H:%M"), "commit": commit, "source": source_text,
            "machine": machine(), "versions": tool_versions(), "rounds": args.rounds, "load_before": loadavg(),
            "connections": args.connections, "threads": args.threads, "idle": args.idle if not args.skip_idle else 0,
            "noise": args.noise, "retries": args.retries, "workloads": args.workloads,
            "partial": "; ".join(partial),
            "server_cpu": args.server_cpu, "client_cpu": args.client_cpu, "proxy_cpu": args.proxy_cpu,
            "settings": f"{args.duration:g} s per measurement after a {args.warmup:g} s warm-up, "
                        f"{args.connections} connections unless a table says otherwise, pool of {args.threads} "
                        f"threads (calc-server, gunicorn gthread, waitress; granian uses its defaults), "
                        f"apps {args.app} and {BENCH_APP}"}
    report: dict[str, Any] = {"meta": meta, "direct": {}, "proxied": {}, "template": {}, "tls": {}, "metrics": {},
                              "idle": {}, "answers": {}, "skipped": {}}
    answers = report["answers"]
    direct: Samples = {}
    proxy_samples: Samples = {}
    template_samples: Samples = {}
    groups = [(app, [k for k in args.workloads if WORKLOADS[k].app == app]) for app in (CALC_APP, BENCH_APP)]
    for app, keys in groups:
        if not keys:
            continue
        names = [n for n in args.servers if not (n == "nginx" and app == BENCH_APP)]  # nginx's fixed 200 is no app
        print(f"starting servers ({app}) ...")
        targets: dict[str, Target] = {}
        for name in names:
            t = targets[name] = servers.start(name, app)
            answers[t.name if app == CALC_APP else f"{t.name} ({app})"] = t.answers if t.up else "—"
            print(f"  {t.name}: {f'up on port {t.port}, answers {t.answers}' if t.up else f'FAILED: {t.error}'}")
        proxied: dict[str, Target] = {}
        template: dict[str, Target] = {}
        proxy_keys = [k for k in keys if k in PROXIED_WORKLOADS]
        if app == CALC_APP and proxy_keys:
            ups = [t for t in targets.values() if t.up]
            if not args.skip_nginx and ups:
                display_to_key = {t.name: key for key, t in targets.items()}
                proxied = {display_to_key[d]: t for d, t in servers.start_proxy(ups).items()}
                for t in proxied.values():
                    answers[t.name] = t.answers if t.error is None else "—"
            if args.skip_template:
                report["skipped"]["template"] = "--skip-template"
            else:
                for name in (OURS, "granian"):
                    if name in targets and targets[name].up:
                        t = template[name] = servers.start_template_proxy(targets[name])
                        answers[t.name] = t.answers if t.error is None else f"— {t.error}"
                        print(f"  {t.name}: {'up' if t.error is None else f'FAILED: {t.error}'} on port {t.port}")
        order = list(targets)
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds} ({app})")
            for key in keys:
                workload = WORKLOADS[key]
                for name in rotations(order, round_index):
                    label = f"r{round_index + 1}-direct-{name}-{key}"
                    data = meter.measure(targets[name], workload.mode, label, connections=workload.connections)
                    direct.setdefault(targets[name].name, {}).setdefault(key, []).append(data)
                    print(f"  direct {targets[name].name:<20} {workload.title:<50} {brief(data)}")
                if key not in PROXIED_WORKLOADS:
                    continue
                for table, via, samples in (("nginx", proxied, proxy_samples),
                                            ("template", template, template_samples)):
                    for name in rotations([n for n in order if n in via], round_index):
                        target = via[name]
                        pids = (target.proc.pid,) if target.proc is not None else ()
                        data = meter.measure(target, workload.mode, f"r{round_index + 1}-{table}-{name}-{key}",
                                             usage_of=targets[name], client_pids=pids)
                        samples.setdefault(targets[name].name, {}).setdefault(key, []).append(data)
                        print(f"  {target.name:<27} {workload.title:<43} {brief(data)}")
        Proc.stop_all()  # free the CPU for the next group
    report["direct"] = fold(direct)
    report["proxied"] = fold(proxy_samples)
    report["template"] = fold(template_samples)
    if args.skip_tls:
        report["skipped"]["tls"] = "--skip-tls"
    else:
        report["tls"] = tls_run(servers, meter, args, report)
    if args.skip_metrics:
        report["skipped"]["metrics"] = "--skip-metrics"
    elif OURS in args.servers:
        report["metrics"] = metrics_run(servers, meter, args, report)
    if not args.skip_idle:
        report["idle"] = idle_run(servers, meter, args)
    meta["load_after"] = loadavg()
    return report


def fold(samples: Samples) -> dict[str, dict[str, Any]]:
    return {name: {key: summarize(values) for key, values in per.items()} for name, per in samples.items()}


def tls_run(servers: Servers, meter: Meter, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """Keep-alive requests and new handshakes per second over TLS, for the servers that speak it."""
    names = [n for n in TLS_SERVERS if n in args.servers]
    if OURS in names and servers.our_flag("--certfile") is None:
        report["skipped"]["tls"] = "this server has no --certfile option (yet)"
        print(f"TLS: skipping calc-server: {report['skipped']['tls']}")
        names.remove(OURS)
    if not names:
        return {}
    if shutil.which("openssl") is None:
        report["skipped"]["tls"] = "the openssl command is not installed"
        return {}
    print("TLS: starting servers ...")
    starters = {OURS: servers.start_ours, "granian": servers.start_granian, "gunicorn": servers.start_gunicorn}
    targets = {name: starters[name](tls=True, log_name=f"{name}-tls") for name in names}
    samples: Samples = {}
    for t in targets.values():
        report["answers"][f"{t.name} (TLS)"] = t.answers if t.up else f"— {t.error}"
        print(f"  {t.name} (TLS): {f'up on port {t.port}, answers {t.answers}' if t.up else f'FAILED: {t.error}'}")
    for round_index in range(args.rounds):
        for key, mode in (("keepalive", "get"), ("handshakes", "close")):
            for name in rotations(list(targets), round_index):
                data = meter.measure(targets[name], mode, f"r{round_index + 1}-tls-{name}-{key}")
                samples.setdefault(targets[name].name, {}).setdefault(key, []).append(data)
                print(f"  TLS {targets[name].name:<20} {key:<12} {brief(data)}")
    Proc.stop_all()
    folded = fold(samples)
    for t in targets.values():
        folded.setdefault(t.name, {})["answers"] = report["answers"][f"{t.name} (TLS)"]
    return folded


def metrics_run(servers: Servers, meter: Meter, args: argparse.Namespace, report: dict[str, Any]) -> dict[str, Any]:
    """This server with its metrics off and on (GET /add/2/3); the endpoint itself is not scraped."""
    flag = servers.our_flag(*METRICS_FLAGS)
    if flag is None:
        report["skipped"]["metrics"] = f"this server has none of {', '.join(METRICS_FLAGS)} (yet)"
        print(f"metrics: skipped: {report['skipped']['metrics']}")
        return {}
    value = "0" if flag.endswith("port") else "127.0.0.1:0"
    print(f"metrics: off and on ({flag} {value}) ...")
    targets = {"off": servers.start_ours(log_name="calc-server-metrics-off"),
               "on": servers.start_ours(extra=(flag, value), log_name="calc-server-metrics-on")}
    samples: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for round_index in range(args.rounds):
        for state in rotations(list(targets), round_index):
            data = meter.measure(targets[state], "get", f"r{round_index + 1}-metrics-{state}")
            samples[state].append(data)
            print(f"  metrics {state:<4} {brief(data)}")
    Proc.stop_all()
    folded = {state: {**summarize(values), "answers": targets[state].answers if targets[state].up else "—"}
              for state, values in samples.items()}
    return {"flag": f"{flag} {value}", **folded}


def idle_run(servers: Servers, meter: Meter, args: argparse.Namespace) -> dict[str, Any]:
    print(f"idle-connection run: {args.idle:,} connections")
    headroom = args.idle + 4 * args.connections + 100
    target = servers.start_ours(extra=("--max-connections", str(headroom)), log_name="calc-server-idle")
    if not target.up:
        return {"without": {"error": target.error}, "with": {"error": target.error}, "holder": {}}
    assert target.proc is not None
    without, loaded, holder_info = [], [], {}
    for round_index in range(args.rounds):
        data = meter.measure(target, "get", f"r{round_index + 1}-idle-without")
        without.append(data)
        print(f"  without idle connections  {brief(data)}")
        holder = Proc("idle holder", pinned(args.client_cpu, [
            sys.executable, str(HOLDER), "--port", str(target.port), "--count", str(args.idle)]),
            servers.logs / f"idle-holder-r{round_index + 1}.log", env=servers.env, stdin=subprocess.PIPE,
            text_stdout=True)
        try:
            ready = read_tagged(holder, "READY", timeout=args.idle_open_timeout + 30)
            holder_info = {"opened": ready.get("open"), "failed": ready.get("failed"),
                           "open_seconds": ready.get("seconds"), "errors": ready.get("errors")}
            idle_rss, idle_threads = proc_usage(target.proc.pid)
            holder_info.update(idle_rss_mib=round(idle_rss, 1), idle_threads=idle_threads)
            data = meter.measure(target, "get", f"r{round_index + 1}-idle-with", client_pids=(holder.pid,))
            loaded.append(data)
            print(f"  with {args.idle:,} idle connections  {brief(data)}")
            assert holder.proc.stdin is not None
            holder.proc.stdin.write("status\n")
            holder.proc.stdin.flush()
            status = read_tagged(holder, "STATUS", timeout=30)
            holder_info.update(open_after=status.get("open"), closed_by_server=status.get("closed_by_server"),
                               bad_responses=status.get("bad_responses"))
            print(f"  holder: {holder_info}")
        except (RuntimeError, OSError) as exc:
            loaded.append({"error": str(exc)[:300]})
            print(f"  ! idle holder: {exc}", file=sys.stderr)
        finally:
            holder.stop()
    rss, threads = proc_usage(target.proc.pid)
    holder_info.update(after_rss_mib=round(rss, 1), after_threads=threads)
    target.proc.stop()
    return {"without": summarize(without), "with": summarize(loaded), "holder": holder_info}


def read_tagged(proc: Proc, tag: str, timeout: float) -> dict[str, Any]:
    """Read the child's stdout until a line ``TAG {json}``."""
    assert proc.proc.stdout is not None
    result: dict[str, Any] = {}
    error: list[str] = []

    def reader() -> None:
        assert proc.proc.stdout is not None
        for line in proc.proc.stdout:
            if line.startswith(tag + " "):
                result.update(json.loads(line[len(tag) + 1:]))
                return
            if line.startswith("ERROR "):
                error.append(line)
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    thread.join(timeout)
    if error:
        raise RuntimeError(error[0].strip())
    if not result:
        raise RuntimeError(f"{proc.name}: no {tag} line within {timeout}s: {proc.log_tail()}")
    return result


def export_source(ref: str, dest: Path) -> tuple[Path, str, str]:
    """Where to import server/ from: (directory, commit, description).

    A ref exports server/ as committed (``git archive``), so teammates editing the working tree
    during a run cannot change what is measured; ``worktree`` uses the working tree as it is.
    """
    if ref == "worktree":
        commit, dirty = git_commit()
        return ROOT, commit, "the working tree" + (" (with uncommitted changes in server/)" if dirty else "")
    sha = subprocess.run(["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True,
                         text=True, timeout=10)
    if sha.returncode != 0:
        raise SystemExit(f"--ref {ref}: not a commit ({sha.stderr.strip()})")
    commit = sha.stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", "--format=tar", commit, "server"], cwd=ROOT, capture_output=True,
                             timeout=60, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest, commit[:12], f"`server/` exported from commit {commit[:12]} ({ref})"


def git_commit() -> tuple[str, bool]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "server"], cwd=ROOT, capture_output=True,
                                    text=True, timeout=10).stdout.strip())
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description="wrk benchmark of the calculator server "
                                     "against gunicorn, waitress, granian and nginx (see docs/benchmarks.md)")
    parser.add_argument("--duration", type=int, default=10, help="whole seconds per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each measurement, 0: none (2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; medians are reported (1)")
    parser.add_argument("--connections", type=int, default=50, help="wrk keep-alive connections (50)")
    parser.add_argument("--threads", type=int, default=8,
                        help="thread pool of calc-server, gunicorn gthread and waitress (8)")
    parser.add_argument("--idle", type=int, default=10000, help="idle keep-alive connections in table 3 (10000)")
    parser.add_argument("--idle-open-timeout", type=float, default=120.0, help="seconds to open them (120)")
    parser.add_argument("--servers", default=",".join(ALL_SERVERS),
                        help=f"comma list of servers to run, from {','.join(ALL_SERVERS)} (all)")
    parser.add_argument("--app", default=CALC_APP,
                        help="WSGI app every server serves in the calculator workloads (server.calculator:app)")
    parser.add_argument("--workloads", default=",".join(DEFAULT_WORKLOADS),
                        help=f"comma list of direct workloads, from {','.join(WORKLOADS)} (all)")
    parser.add_argument("--skip-nginx", action="store_true", help="leave out the through-nginx table")
    parser.add_argument("--skip-template", action="store_true", help="leave out the nginx-template table")
    parser.add_argument("--skip-tls", action="store_true", help="leave out the TLS table")
    parser.add_argument("--skip-metrics", action="store_true", help="leave out the metrics on/off table")
    parser.add_argument("--skip-idle", action="store_true", help="leave out the idle-connection table")
    parser.add_argument("--server-cpu", default="0", help="CPU list for the servers (taskset -c), 'none' to not pin")
    parser.add_argument("--client-cpu", default="1", help="CPU list for wrk and the idle holder")
    parser.add_argument("--proxy-cpu", default="1", help="CPU list for the nginx proxy in table 2")
    parser.add_argument("--start-timeout", type=float, default=30.0, help="seconds a server gets to start (30)")
    parser.add_argument("--ref", default="HEAD",
                        help="commit whose server/ is measured (exported next to the logs), or 'worktree' (HEAD)")
    parser.add_argument("--noise", type=float, default=0.10,
                        help="share of a pinned CPU other processes may use before a measurement is redone (0.10)")
    parser.add_argument("--retries", type=int, default=2, help="times a disturbed measurement is redone (2)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                        help="first wait up to S seconds for the machine to be under 10%% busy (0: don't)")
    parser.add_argument("--out", type=Path, default=ROOT / "results", help="where results go (results/)")
    parser.add_argument("--no-write", action="store_true", help="print the tables only; write no file under results/ "
                        "(logs go to a temporary directory, removed at the end)")
    args = parser.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.servers) - set(ALL_SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    for key in ("server_cpu", "client_cpu", "proxy_cpu"):
        if getattr(args, key).lower() == "none":
            setattr(args, key, None)
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be at least 1 and --duration positive")
    return args


def preflight(args: argparse.Namespace) -> None:
    missing = [tool for tool in ("wrk", "nginx") if shutil.which(tool) is None]
    if any(getattr(args, k) is not None for k in ("server_cpu", "client_cpu", "proxy_cpu")) and not shutil.which(
            "taskset"):
        missing.append("taskset")
    if missing:
        raise SystemExit(f"missing programs: {', '.join(missing)} (scripts/bench installs them)")
    if (os.cpu_count() or 1) < 2 and args.server_cpu != args.client_cpu:
        print("warning: fewer than 2 CPUs; server and wrk will share one", file=sys.stderr)
    if args.client_cpu is not None:
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, cpu_set(args.client_cpu))  # keep this harness off the server's CPU
    limit = raise_nofile()
    if not args.skip_idle and limit < args.idle + 1000:
        raise SystemExit(f"RLIMIT_NOFILE hard limit is {limit}; {args.idle} idle connections need more "
                         "(raise it with ulimit -Hn, or use --idle / --skip-idle)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preflight(args)
    if args.wait_quiet > 0:
        wait_quiet(args.wait_quiet)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.no_write:
        logs = Path(tempfile.mkdtemp(prefix=f"calc-bench-{stamp}-"))
        print(f"logs: {logs} (--no-write: removed at the end)")
    else:
        logs = ROOT / "results" / "tmp" / f"bench-{stamp}"
        logs.mkdir(parents=True, exist_ok=True)
        print(f"logs: {logs.relative_to(ROOT)}")
    try:
        with signals_raise():
            try:
                report = run(args, logs)
            finally:
                Proc.stop_all()
    finally:
        if args.no_write:
            shutil.rmtree(logs, ignore_errors=True)
    markdown = render(report)[0]
    print()
    print(markdown)
    if not args.no_write:
        for path in write_results(report, markdown, args.out):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    ours = report["direct"].get(OURS, {})
    if not ours or all("error" in v for v in ours.values()):
        print("calc-server produced no measurement", file=sys.stderr)
        return 1
    return 0

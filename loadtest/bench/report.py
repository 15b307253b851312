"""Turning measurements into the published tables, the chart and the result files.

``summarize`` folds the rounds of one measurement into medians; ``render`` writes the Markdown
report (summary against granian, one table per workload, the proxy, TLS, metrics and idle tables,
and the targets); ``write_results`` decides where it goes: a full run replaces results/latest.md,
anything less (some servers, a table skipped, short measurements) goes to results/partial-<time>.md
so that it never replaces the published figures.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from .servers import OURS
from .workloads import PROXIED_WORKLOADS, WORKLOADS


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of rate and latency; error counts summed; an error in any round is kept."""
    good = [s for s in samples if "error" not in s]
    if not good:
        return {"error": samples[0].get("error", "no data") if samples else "no data"}
    out: dict[str, Any] = {"rounds": len(good)}
    for key in ("rps", "p50_us", "p99_us", "rss_mib", "threads", "other_cpu", "other_client_cpu"):
        values = [s[key] for s in good if s.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
    for key in ("status", "connect", "read", "write", "timeout", "socket_errors", "requests"):
        out[key] = sum(s.get(key, 0) for s in good)
    out["rps_all"] = [round(s["rps"]) for s in good]
    out["noise_all"] = [round(s.get("noise", 0.0), 3) for s in good]
    out["attempts"] = sum(s.get("attempts", 1) for s in good)
    if len(good) < len(samples):
        out["failed_rounds"] = len(samples) - len(good)
    return out


def cell(text: str, limit: int = 120) -> str:
    """Text fit for one Markdown table cell: one line, no pipes."""
    flat = " ".join(str(text).split()).replace("|", "/")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def percent(fraction: float | None) -> str:
    return "—" if fraction is None else f"{fraction * 100:.0f}%"


def noise_text(data: dict[str, Any]) -> str:
    return f"{percent(data.get('other_cpu'))} / {percent(data.get('other_client_cpu'))}"


def ms(us: float | None) -> str:
    return "—" if us is None else f"{us / 1000:.2f}"


def ratio_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def direct_table(rows: list[tuple[str, dict[str, Any], str]], baseline: dict[str, Any] | None) -> list[str]:
    lines = ["| server | req/s | p50 ms | p99 ms | ratio to calc-server | non-2xx | socket errors (c/r/w/t) "
             "| peak RSS MiB | threads | others' CPU use (server/client core) | answers |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |"]
    base = baseline.get("rps") if baseline else None
    for name, data, answers in rows:
        if "error" in data:
            lines.append(f"| {name} | — | — | — | — | — | — | — | — | — | did not run: {cell(data['error'])} |")
            continue
        ratio = data["rps"] / base if base else None
        errors = f"{data['connect']}/{data['read']}/{data['write']}/{data['timeout']}"
        lines.append(f"| {name} | {data['rps']:,.0f} | {ms(data.get('p50_us'))} | {ms(data.get('p99_us'))} "
                     f"| {ratio_text(ratio)} | {data['status']} | {errors} | {data.get('rss_mib', 0):.0f} "
                     f"| {data.get('threads', 0):.0f} | {noise_text(data)} | {answers} |")
    return lines


def rps_of(data: dict[str, Any] | None) -> float | None:
    return data.get("rps") if data and "error" not in data else None


def clean(data: dict[str, Any] | None) -> bool:
    """Measured, with no non-2xx responses and no socket errors."""
    return bool(data) and "error" not in data and data["status"] == 0 and data["socket_errors"] == 0


def ratio_check(label: str, ours: dict[str, Any] | None, other: dict[str, Any] | None, goal: float,
                ours_ok: bool) -> tuple[str, str, str, str]:
    a, b = rps_of(ours), rps_of(other)
    if a is None or b is None or not b:
        return label, "—", f"≥ {goal:g}x", "n/a"
    value = a / b
    passed = value >= goal and ours_ok and clean(ours)
    note = "" if clean(ours) and ours_ok else " (errors or wrong answers)"
    return label, f"{value:.2f}x", f"≥ {goal:g}x", ("PASS" if passed else "FAIL") + note


def render(report: dict[str, Any]) -> tuple[str, list[tuple[str, str, str, str]]]:
    meta = report["meta"]
    direct, proxied, idle = report["direct"], report["proxied"], report["idle"]
    template, tls, metrics = report.get("template", {}), report.get("tls", {}), report.get("metrics", {})
    answers, skipped = report["answers"], report.get("skipped", {})
    out = [f"# Benchmark {meta['date']}", "",
           f"- server code: {meta['source']}",
           f"- machine: {meta['machine']}",
           f"- tools: {meta['versions']}",
           f"- settings: {meta['settings']}",
           f"- load average (1/5/15 min) before: {meta['load_before']}, after: {meta['load_after']} "
           "(anything else running on this machine skews the numbers)",
           "- servers each run as one process (one worker) pinned to CPU "
           f"{meta['server_cpu']}; wrk (1 thread) pinned to CPU {meta['client_cpu']}; nginx proxy pinned to CPU "
           f"{meta['proxy_cpu']}; keep-alive; medians over {meta['rounds']} interleaved round(s).",
           "- non-2xx and socket errors are wrk's counts summed over the rounds; *answers* is a check of "
           "the real response bodies (`5`, `{\"result\": 8}`, `Hello, bench!`, the 1 MiB body) made before measuring.",
           f"- *others' CPU use*: share of the server's and of the client's pinned CPU taken by processes "
           f"other than the ones measured (median over rounds). A measurement with more than "
           f"{meta['noise']:.0%} on either was redone up to {meta['retries']} times and the quietest attempt "
           "kept; rows still showing more than that are skewed by other work on the machine.", ""]
    if meta.get("partial"):
        out[1:1] = ["", f"**Partial run** ({meta['partial']}): not the published results."]
    out += summary_table(report)
    checks: list[tuple[str, str, str, str]] = []
    ours_ok = answers.get(OURS) == "ok"
    for key in meta["workloads"]:
        workload = WORKLOADS[key]
        rows = [(name, direct[name][key], answers.get(f"{name} ({workload.app})", answers.get(name, "")))
                for name in direct if key in direct[name]]
        conns = workload.connections or meta["connections"]
        out += [f"## Direct, one core: {workload.title}", "",
                f"{workload.note[:1].upper()}{workload.note[1:]}; {conns} connection{'s' if conns > 1 else ''}.", "",
                *direct_table(rows, direct.get(OURS, {}).get(key)), ""]
        if key in PROXIED_WORKLOADS:
            ours = direct.get(OURS, {}).get(key)
            checks.append(ratio_check(f"{workload.title} vs waitress", ours, direct.get("waitress", {}).get(key), 3.0,
                                      ours_ok))
            checks.append(ratio_check(f"{workload.title} vs granian", ours, direct.get("granian", {}).get(key), 0.7,
                                      ours_ok))
    if proxied:
        for key in PROXIED_WORKLOADS:
            if key not in meta["workloads"]:
                continue
            title = WORKLOADS[key].title
            rows = [(f"nginx → {name}", proxied[name][key], answers.get(f"nginx → {name}", ""))
                    for name in proxied]
            out += [f"## Through nginx (upstream keepalive): {title}", "",
                    *direct_table(rows, proxied.get(OURS, {}).get(key)), "",
                    "RSS and threads are those of the upstream server; the nginx proxy is not counted.", ""]
            checks.append(ratio_check(f"nginx: {title} vs nginx → granian", proxied.get(OURS, {}).get(key),
                                      proxied.get("granian", {}).get(key), 0.9,
                                      answers.get(f"nginx → {OURS}") == "ok"))
    if template:
        for key in PROXIED_WORKLOADS:
            if key not in meta["workloads"]:
                continue
            rows = [(f"nginx template → {name}", data[key], answers.get(f"nginx template → {name}", ""))
                    for name, data in template.items() if key in data]
            out += [f"## Through the project's nginx template: {WORKLOADS[key].title}", "",
                    "nginx/templates/default.conf.template rendered as the images do: a request id made (and sent "
                    "upstream) per request, the JSON access log written per request, the rate-limit zone consulted "
                    "(its rate raised so that the one benchmarking client is never refused).", "",
                    *direct_table(rows, template.get(OURS, {}).get(key)), ""]
    elif "template" in skipped:
        out += ["## Through the project's nginx template", "", f"Not run: {skipped['template']}", ""]
    out += tls_section(tls, skipped.get("tls"))
    out += metrics_section(metrics, skipped.get("metrics"))
    if idle:
        out += idle_section(idle, meta, checks)
    out += ["## Targets", "", "| target | measured | goal | result |", "| --- | ---: | ---: | --- |"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in checks]
    out.append("")
    return "\n".join(out), checks


def summary_table(report: dict[str, Any]) -> list[str]:
    """calc-server against granian, one row per workload measured for both (the issue-15 goal: ≥ 1.0x)."""
    direct, template, tls = report["direct"], report.get("template", {}), report.get("tls", {})
    rows: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None]] = []
    for key in report["meta"]["workloads"]:
        rows.append((WORKLOADS[key].title, direct.get(OURS, {}).get(key), direct.get("granian", {}).get(key)))
    for key in PROXIED_WORKLOADS:
        if template.get(OURS, {}).get(key) or template.get("granian", {}).get(key):
            rows.append((f"through the nginx template: {WORKLOADS[key].title}", template.get(OURS, {}).get(key),
                         template.get("granian", {}).get(key)))
    for key, title in TLS_ROWS.items():
        if tls.get(OURS, {}).get(key) or tls.get("granian", {}).get(key):
            rows.append((f"TLS: {title}", tls.get(OURS, {}).get(key), tls.get("granian", {}).get(key)))
    rows = [r for r in rows if r[1] is not None or r[2] is not None]
    if not rows:
        return []
    out = ["## Summary: calc-server and granian", "", "| workload | calc-server req/s | granian req/s | ratio |",
           "| --- | ---: | ---: | ---: |"]
    for title, ours, theirs in rows:
        a, b = rps_of(ours), rps_of(theirs)
        mark = "" if clean(ours) else " (errors)"
        out.append(f"| {title} | {'—' if a is None else f'{a:,.0f}'}{mark if a is not None else ''} "
                   f"| {'—' if b is None else f'{b:,.0f}'} | {ratio_text(a / b if a and b else None)} |")
    return [*out, ""]


TLS_ROWS = {"keepalive": "GET /add/2/3, keep-alive", "handshakes": "new connection per request (handshakes/s)"}


def tls_section(tls: dict[str, Any], skipped: str | None) -> list[str]:
    if not tls and not skipped:
        return []
    out = ["## TLS (self-signed P-256 certificate, TLS as each server negotiates it)", ""]
    if skipped:
        out.append(f"Not run for calc-server: {skipped}")
        out.append("")
    for key, title in TLS_ROWS.items():
        rows = [(name, data[key], data.get("answers", "")) for name, data in tls.items() if key in data]
        if rows:
            out += [f"### {title}", ""]
            if key == "handshakes":
                out += ["Every request opens a connection (`Connection: close`), so req/s is TLS handshakes "
                        "per second.", ""]
            out += [*direct_table(rows, tls.get(OURS, {}).get(key)), ""]
    return out


def metrics_section(metrics: dict[str, Any], skipped: str | None) -> list[str]:
    if skipped:
        return ["## Metrics on and off (calc-server)", "", f"Not run: {skipped}", ""]
    if not metrics:
        return []
    rows = [(f"calc-server, metrics {state}", data, data.get("answers", "")) for state, data in metrics.items()
            if state != "flag"]
    return ["## Metrics on and off (calc-server, GET /add/2/3)", "",
            f"On: started with `{metrics.get('flag', '')}`; the endpoint is not scraped during the run.", "",
            *direct_table(rows, metrics.get("off")), ""]


def write_results(report: dict[str, Any], markdown: str, out: Path) -> list[Path]:
    """Full run: results/bench-<day>.* and results/latest.md. Partial run: results/partial-<time>.* only."""
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    partial = report["meta"].get("partial")
    stem = out / (f"partial-{now:%Y%m%d-%H%M%S}" if partial else f"bench-{now:%Y-%m-%d}")
    png = stem.with_suffix(".png")
    has_chart = chart(report, png)
    image = f"\n![throughput chart]({png.name})\n" if has_chart else ""
    stem.with_suffix(".md").write_text(markdown + image)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n")
    written = [stem.with_suffix(".md"), stem.with_suffix(".json")] + ([png] if has_chart else [])
    if partial:
        print(f"partial run ({partial}): {out / 'latest.md'} left as it is")
        return written
    (out / "latest.md").write_text(markdown.replace("# Benchmark", "# Latest benchmark", 1) + image
                                   + f"\nFrom `{stem.with_suffix('.md').name}`.\n")
    return [*written, out / "latest.md"]


def idle_section(idle: dict[str, Any], meta: dict[str, Any], checks: list[tuple[str, str, str, str]]) -> list[str]:
    base, loaded = idle.get("without", {}), idle.get("with", {})
    count = meta["idle"]
    out = [f"## {count:,} idle keep-alive connections (calc-server, GET /add/2/3)", "",
           "| run | req/s | p50 ms | p99 ms | non-2xx | socket errors (c/r/w/t) | RSS MiB (peak) | threads (peak) "
           "| others' CPU use (server/client core) |",
           "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    for label, data in (("without idle connections", base), (f"with {count:,} idle connections", loaded)):
        if "error" in data or not data:
            out.append(f"| {label} | — | — | — | — | — | — | — | did not run: {cell(data.get('error', ''))} |")
            continue
        errors = f"{data['connect']}/{data['read']}/{data['write']}/{data['timeout']}"
        out.append(f"| {label} | {data['rps']:,.0f} | {ms(data.get('p50_us'))} | {ms(data.get('p99_us'))} "
                   f"| {data['status']} | {errors} | {data.get('rss_mib', 0):.1f} | {data.get('threads', 0):.0f} "
                   f"| {noise_text(data)} |")
    holder = idle.get("holder", {})
    out += ["", f"Idle holder: {json.dumps(holder, sort_keys=True)}", ""]
    if "error" in base or "error" in loaded or not base or not loaded:
        checks.append(("idle: throughput with/without", "—", "≥ 0.80", "n/a"))
        return out
    held = holder.get("open_after", 0)
    checks.append(("idle: idle connections served and still open after the run", f"{held:,}", f"{count:,}",
                   "PASS" if held >= count else "FAIL"))
    value = loaded["rps"] / base["rps"] if base["rps"] else 0
    checks.append(("idle: throughput with / without", f"{value:.2f}", "≥ 0.80",
                   "PASS" if value >= 0.8 and clean(loaded) else "FAIL"))
    # "Bounded by the pool": at most the pool plus a few service threads, and no growth from the
    # idle connections (at most 2 more than without them).
    pool = meta["threads"]
    limit = int(min(base.get("threads", 0) + 2, pool + 8))
    checks.append((f"idle: threads with idle connections (pool {pool})", f"{loaded.get('threads', 0):.0f}",
                   f"≤ {limit}", "PASS" if loaded.get("threads", 0) <= limit else "FAIL"))
    checks.append(("idle: RSS with idle connections", f"{loaded.get('rss_mib', 0):.1f} MiB", "< 200 MB",
                   "PASS" if loaded.get("rss_mib", 1e9) * 1.048576 < 200 else "FAIL"))
    return out


def chart(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install -r requirements-bench.txt)", file=sys.stderr)
        return False
    direct, proxied, idle = report["direct"], report["proxied"], report["idle"]
    names = list(direct)
    series: list[tuple[str, list[float]]] = []
    for scenario in PROXIED_WORKLOADS:
        title = WORKLOADS[scenario].title
        series.append((f"direct {title}", [rps_of(direct[n].get(scenario)) or 0 for n in names]))
    for scenario in PROXIED_WORKLOADS:
        if proxied:
            title = WORKLOADS[scenario].title
            series.append((f"via nginx {title}", [rps_of(proxied.get(n, {}).get(scenario)) or 0 for n in names]))
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1]})
    ax = axes[0]
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        xs = [x + (i - (len(series) - 1) / 2) * width for x in range(len(names))]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[f"{v / 1000:.1f}k" if v else "" for v in values], fontsize=7, rotation=90,
                     padding=2)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("requests/s (median)")
    ax.set_title(f"wrk, {report['meta']['connections']} keep-alive connections, server on one core")
    ax.legend(fontsize=8)
    ax.margins(y=0.15)
    ax2 = axes[1]
    if idle and "error" not in idle.get("without", {"error": 1}) and "error" not in idle.get("with", {"error": 1}):
        labels = ["without", f"with {report['meta']['idle']:,}\nidle conns"]
        values = [idle["without"]["rps"], idle["with"]["rps"]]
        bars = ax2.bar(labels, values, color=["tab:blue", "tab:orange"])
        ax2.bar_label(bars, labels=[f"{v:,.0f} req/s\n{d.get('rss_mib', 0):.0f} MiB, {d.get('threads', 0):.0f} thr"
                                    for v, d in zip(values, (idle["without"], idle["with"]), strict=True)],
                      fontsize=8)
        ax2.margins(y=0.25)
    else:
        ax2.text(0.5, 0.5, "idle-connection run\nnot available", ha="center", va="center")
    ax2.set_title("calc-server, GET /add/2/3")
    fig.suptitle(f"calculator benchmark {report['meta']['date']} ({report['meta']['commit']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tool_versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("gunicorn", "waitress", "granian", "locust"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            parts.append(f"{dist} {version(dist)}")
    for argv, pattern in ((["nginx", "-v"], r"nginx/(\S+)"), (["wrk", "-v"], r"wrk (\S+)")):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            match = re.search(pattern, out.stdout + out.stderr)
            if match:
                parts.append(f"{argv[0]} {match.group(1)}")
    return ", ".join(parts)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Linux {platform.release()}"

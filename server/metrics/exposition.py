"""Totals to the Prometheus text exposition format, version 0.0.4.

Counters with a label set that was never hit are left out (a scrape of a fresh
server is short); the histogram and the plain counters and gauges are always
there, so a dashboard has a series to draw from the first scrape.
"""

from __future__ import annotations

from collections.abc import Mapping

from .layout import (
    ACCEPTED,
    ACCESS_LOG_DROPPED,
    BUCKETS,
    BUSY_THREADS,
    BYTES_IN,
    BYTES_OUT,
    DURATION,
    IDLE_CONNECTIONS,
    METHODS,
    OPEN_CONNECTIONS,
    PROTOCOL_ERRORS,
    REFUSED,
    REQUESTS,
    STATUSES,
)
from .store import Totals

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "calc_server_"
RESTART_REASONS = ("crash", "max-requests", "reload", "timeout")  # always shown, at 0 until it happens


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: str = "") -> None:
        self.lines.append(f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}")


def render(totals: Totals, *, threads: int, restarts: Mapping[str, int], process: Mapping[str, float],
           max_connections: int = 0) -> bytes:
    """The whole scrape. ``threads`` is per worker; ``restarts`` counts replaced workers by reason;
    ``max_connections`` is the per-process --max-connections (0 leaves the limit out)."""
    cells = totals.cells
    out = _Writer()
    p = PREFIX

    out.family(p + "requests_total", "counter",
               "Requests answered by the application, by method (standard ones, else OTHER) and status.")
    for m, method in enumerate(METHODS):
        base = REQUESTS + m * len(STATUSES)
        for s, status in enumerate(STATUSES):
            if cells[base + s]:
                out.sample(p + "requests_total", cells[base + s], f'method="{method}",status="{status}"')

    name = p + "request_duration_seconds"
    out.family(name, "histogram",
               "Time from reading a request to its answer handed to the connection (application time included).")
    running = 0
    for i, bound in enumerate(BUCKETS):
        running += cells[DURATION + i]
        out.sample(name + "_bucket", running, f'le="{_number(bound)}"')
    running += cells[DURATION + len(BUCKETS)]
    out.sample(name + "_bucket", running, 'le="+Inf"')
    out.sample(name + "_sum", totals.duration_sum)
    out.sample(name + "_count", running)

    busy = cells[BUSY_THREADS]
    open_connections = cells[OPEN_CONNECTIONS]
    idle = cells[IDLE_CONNECTIONS]
    out.family(p + "requests_in_flight", "gauge",
               "Requests the application is working on now (sampled 4 times a second).")
    out.sample(p + "requests_in_flight", busy)
    out.family(p + "connections", "gauge",
               "Open client connections: idle ones wait for a next request, active ones have one in progress.")
    out.sample(p + "connections", max(open_connections - idle, 0), 'state="active"')
    out.sample(p + "connections", idle, 'state="idle"')
    if max_connections:
        # The limit beside the gauge it bounds, so an alert can say "near the limit" without repeating
        # the setting: each live worker may hold --max-connections.
        out.family(p + "connections_limit", "gauge",
                   "Open connections the server holds before refusing new ones: --max-connections per live worker.")
        out.sample(p + "connections_limit", max_connections * totals.workers)
    out.family(p + "connections_accepted_total", "counter", "Client connections accepted.")
    out.sample(p + "connections_accepted_total", cells[ACCEPTED])
    out.family(p + "connections_refused_total", "counter",
               "Client connections answered 503 and closed because the process was at --max-connections.")
    out.sample(p + "connections_refused_total", cells[REFUSED])

    out.family(p + "protocol_errors_total", "counter",
               "Requests rejected before the application saw them (bad framing, limits, timeouts), by status.")
    for s, status in enumerate(STATUSES):
        if cells[PROTOCOL_ERRORS + s]:
            out.sample(p + "protocol_errors_total", cells[PROTOCOL_ERRORS + s], f'status="{status}"')

    out.family(p + "access_log_dropped_lines_total", "counter",
               "Access-log lines dropped because the log's output did not keep up (a stalled stdout pipe).")
    out.sample(p + "access_log_dropped_lines_total", cells[ACCESS_LOG_DROPPED])

    out.family(p + "threads", "gauge", "Serving threads, busy in a request or idle (all workers).")
    out.sample(p + "threads", busy, 'state="busy"')
    out.sample(p + "threads", max(threads * totals.workers - busy, 0), 'state="idle"')
    out.family(p + "bytes_received_total", "counter", "Bytes read from client connections.")
    out.sample(p + "bytes_received_total", cells[BYTES_IN])
    out.family(p + "bytes_sent_total", "counter", "Bytes of answers written to client connections.")
    out.sample(p + "bytes_sent_total", cells[BYTES_OUT])

    out.family(p + "workers", "gauge", "Serving processes alive now.")
    out.sample(p + "workers", totals.workers)
    out.family(p + "worker_restarts_total", "counter", "Workers replaced by the master, by reason.")
    reasons = dict.fromkeys(RESTART_REASONS, 0)
    reasons.update(restarts)
    for reason, count in sorted(reasons.items()):
        out.sample(p + "worker_restarts_total", count, f'reason="{reason}"')

    helps = {
        "process_cpu_seconds_total": ("counter", "CPU time of the master and every worker, past ones included."),
        "process_resident_memory_bytes": ("gauge", "Resident memory of the master and its live workers, summed."),
        "process_open_fds": ("gauge", "Open file descriptors of the master and its live workers, summed."),
        "process_start_time_seconds": ("gauge", "When the server's first process started, seconds since the epoch."),
    }
    for metric, value in process.items():
        kind, text = helps[metric]
        out.family(metric, kind, text)
        out.sample(metric, value)
    out.lines.append("")
    return "\n".join(out.lines).encode()

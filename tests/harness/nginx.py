"""Native nginx with the repository's reverse-proxy config (nginx/templates/default.conf.template)."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from .tools import ROOT, require_tool

NGINX_TEMPLATE = ROOT / "nginx" / "templates" / "default.conf.template"
# The template's tunables, as docker-compose.yml defaults them (tests/test_nginx.py checks they agree).
NGINX_DEFAULTS = {"NGINX_RATE_LIMIT": "10000r/s", "NGINX_RATE_BURST": "10000", "NGINX_MAX_BODY_SIZE": "1m",
                  "NGINX_RESOLVER": "127.0.0.11", "NGINX_RESOLVE_VALID": "1s", "NGINX_CONNECT_TIMEOUT": "50ms",
                  "NGINX_FAIL_TIMEOUT": "10s"}


def render_nginx_template(values: dict[str, str]) -> str:
    """The template with ``${NAME}``/``$NAME`` replaced for the given names only, as envsubst does in the images."""
    text = NGINX_TEMPLATE.read_text()
    rendered = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)
    missing = sorted(set(re.findall(r"\$\{(\w+)\}", rendered)))
    if missing:
        raise ValueError(f"no value for {', '.join(missing)} in {NGINX_TEMPLATE.name}")
    return rendered


class NginxProxy(str):
    """The base URL of a native nginx started by ``nginx_proxy`` (it is that ``str``), with the process attached.

    ``lines`` is its stdout: one JSON access-log object per request. ``errors`` is its error log (stderr).
    """

    proc: subprocess.Popen[str]
    port: int
    prefix: Path
    lines: list[str]
    errors: list[str]

    def access_log(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGQUIT), then SIGTERM and SIGKILL if it takes longer than ``timeout``."""
        for signum in (signal.SIGQUIT, signal.SIGTERM, signal.SIGKILL):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        shutil.rmtree(self.prefix, ignore_errors=True)
        return self.proc.returncode


def _collect_lines(stream: IO[str], sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def _nginx_main_conf(prefix: Path, workers: int) -> str:
    """A main file for an unprivileged nginx: pid, temp files and logs under ``prefix`` or on stdio."""
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                              "uwsgi", "scgi"))
    return (f"worker_processes {workers};\npid {prefix / 'nginx.pid'};\nerror_log stderr notice;\n"
            f"events {{\n    worker_connections 1024;\n}}\n"
            f"http {{\n{temp}\n    include {prefix / 'default.conf'};\n}}\n")


def start_nginx(upstream: str | tuple[str, int], workers: int = 1, timeout: float = 15.0,
                **values: str) -> NginxProxy:
    """Native nginx on a free loopback port in front of ``upstream``; waits until it answers /nginx-health.

    ``values`` override template variables, e.g. ``NGINX_RATE_LIMIT="1r/m"``.
    """
    binary = require_tool("nginx", "the reverse-proxy tests run nginx natively")
    if isinstance(upstream, tuple):
        host, port = upstream
        upstream = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for _attempt in range(3):  # the free port may be taken before nginx binds it
        prefix = Path(tempfile.mkdtemp(prefix="calc-nginx-"))
        prefix.chmod(0o755)  # run as root, nginx's workers are nobody and need the temp directories
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        settings = {**NGINX_DEFAULTS, "CALC_UPSTREAM": upstream, "NGINX_LISTEN": f"127.0.0.1:{port}", **values}
        (prefix / "default.conf").write_text(render_nginx_template(settings))
        (prefix / "nginx.conf").write_text(_nginx_main_conf(prefix, workers))
        proc = subprocess.Popen([binary, "-e", "stderr", "-p", str(prefix), "-c", str(prefix / "nginx.conf"),
                                 "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1)
        proxy = NginxProxy(f"http://127.0.0.1:{port}")
        proxy.proc, proxy.port, proxy.prefix, proxy.lines, proxy.errors = proc, port, prefix, [], []
        for stream, sink in ((proc.stdout, proxy.lines), (proc.stderr, proxy.errors)):
            threading.Thread(target=_collect_lines, args=(stream, sink), daemon=True).start()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/nginx-health")
                if conn.getresponse().status == 200:
                    return proxy
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.02)
        proxy.stop(timeout=5)
        if "Address already in use" not in "".join(proxy.errors):
            raise AssertionError(f"nginx did not start within {timeout}s:\n{''.join(proxy.errors)}")
    raise AssertionError("nginx found no free port in 3 attempts")

"""Starting the servers under test and the nginx in front of them.

Each ``start_*`` returns a ``Target``; a server that fails to start is recorded with its error and
the run goes on, so one broken server costs its rows, not the benchmark. Features this server may
not have yet (TLS, metrics) are detected from ``python3 -m server --help`` of the code measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .procs import ROOT, Proc, child_env, free_port, pinned
from .workloads import CALC_APP, check_answers, wait_http

OURS = "calc-server"
TEMPLATE = ROOT / "nginx" / "templates" / "default.conf.template"
READY_LINE = re.compile(r"listening on https?://(?:\[[^\]]+\]|[^\s:]+):(\d+)")


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed P-256 certificate for 127.0.0.1 in ``directory``, made with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return cert, key


@dataclasses.dataclass
class Target:
    name: str
    port: int = 0
    proc: Proc | None = None
    error: str | None = None
    answers: str = "not checked"
    fixed: bool = False  # nginx returning a fixed 200: no calculator answer to check
    tls: bool = False

    @property
    def up(self) -> bool:
        return self.error is None and self.proc is not None and self.proc.alive()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"


class Servers:
    """Starts servers from one source tree (``source``) with the benchmark's settings."""

    def __init__(self, args: argparse.Namespace, logs: Path, source: Path) -> None:
        self.args = args
        self.logs = logs
        self.source = source  # where server/ is imported from: a snapshot of --ref, or the working tree
        self.env = child_env(source)
        self._help: str | None = None
        self.cert: tuple[Path, Path] | None = None  # (certificate, key), made by make_certificate

    def app(self, app: str) -> str:
        return self.args.app if app == CALC_APP else app

    def _start(self, name: str, argv: list[str], port: int | None, health: str, app: str, *, fixed: bool = False,
               log_name: str | None = None, tls: bool = False) -> Target:
        target = Target(name=name, fixed=fixed, tls=tls)
        try:
            proc = Proc(name, pinned(self.args.server_cpu, argv), self.logs / f"{log_name or name}.log",
                        env=self.env, cwd=self.source)
            target.proc = proc
            if port is None:  # this server: --port 0, read the port from the ready line
                port = self._ready_port(proc, self.args.start_timeout)
            target.port = port
            wait_http(port, health, proc, self.args.start_timeout, tls=tls)
            target.answers = check_answers(port, app, fixed, tls=tls)
        except (RuntimeError, OSError) as exc:
            target.error = str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else repr(exc)
            print(f"  ! {name}: {exc}", file=sys.stderr)
            if target.proc is not None:
                target.proc.stop()
        return target

    @staticmethod
    def _ready_port(proc: Proc, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = READY_LINE.search(proc.log_text())
            if match:
                return int(match.group(1))
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited with {proc.proc.returncode}: {proc.log_tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{proc.name} printed no 'listening on' line within {timeout}s: {proc.log_tail()}")

    # --- what the measured server supports --------------------------------------------------------

    def our_help(self) -> str:
        if self._help is None:
            out = subprocess.run([sys.executable, "-m", "server", "--help"], cwd=self.source, env=self.env,
                                 capture_output=True, text=True, timeout=60)
            self._help = out.stdout
        return self._help

    def our_flag(self, *candidates: str) -> str | None:
        """The first of ``candidates`` the measured server accepts, or None."""
        text = self.our_help()
        return next((flag for flag in candidates if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)), None)

    def make_certificate(self) -> tuple[Path, Path]:
        """A throw-away self-signed P-256 certificate for 127.0.0.1, made with the openssl CLI."""
        if self.cert is None:
            base = self.logs / "tls"
            base.mkdir(parents=True, exist_ok=True)
            self.cert = self_signed_certificate(base)
        return self.cert

    # --- the servers ------------------------------------------------------------------------------

    def start_ours(self, app: str = CALC_APP, extra: tuple[str, ...] = (), log_name: str | None = None,
                   tls: bool = False, name: str = OURS) -> Target:
        argv = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", "0", "--app", self.app(app),
                "--threads", str(self.args.threads), "--workers", "1", "--no-access-log", *extra]
        if tls:
            cert, key = self.make_certificate()
            argv += ["--certfile", str(cert), "--keyfile", str(key)]
        return self._start(name, argv, None, "/healthz", app, log_name=log_name, tls=tls)

    def start_gunicorn(self, app: str = CALC_APP, tls: bool = False, log_name: str | None = None) -> Target:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--workers", "1", "--threads",
                str(self.args.threads), "--bind", f"127.0.0.1:{port}", "--keep-alive", "75",
                "--log-level", "warning", self.app(app)]
        if tls:
            cert, key = self.make_certificate()
            argv[-1:-1] = ["--certfile", str(cert), "--keyfile", str(key)]
        return self._start("gunicorn", argv, port, "/healthz", app, tls=tls, log_name=log_name)

    def start_waitress(self, app: str = CALC_APP, log_name: str | None = None) -> Target:
        port = free_port()
        argv = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", f"--threads={self.args.threads}",
                self.app(app)]
        return self._start("waitress", argv, port, "/healthz", app, log_name=log_name)

    def start_granian(self, app: str = CALC_APP, tls: bool = False, log_name: str | None = None) -> Target:
        port = free_port()
        granian = shutil.which("granian") or "granian"
        argv = [granian, "--interface", "wsgi", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", self.app(app)]
        if tls:
            cert, key = self.make_certificate()
            argv[-1:-1] = ["--ssl-certificate", str(cert), "--ssl-keyfile", str(key)]
        return self._start("granian", argv, port, "/healthz", app, tls=tls, log_name=log_name)

    def start_nginx_fixed(self, app: str = CALC_APP, log_name: str | None = None) -> Target:
        port = free_port()
        conf = self._nginx_conf("fixed", f"""
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "5"; }}
    }}""")
        return self._start("nginx (fixed 200)", self._nginx_argv(conf), port, "/", app, fixed=True,
                           log_name=log_name or "nginx-fixed")

    def start(self, name: str, app: str = CALC_APP) -> Target:
        """One of ALL_SERVERS hosting ``app``."""
        log = f"{name}-{'calc' if app == CALC_APP else 'apps'}"
        if name == OURS:
            return self.start_ours(app, log_name=log)
        starter = {"gunicorn": self.start_gunicorn, "waitress": self.start_waitress, "granian": self.start_granian,
                   "nginx": self.start_nginx_fixed}[name]
        return starter(app, log_name=log)

    # --- nginx in front -----------------------------------------------------------------------------

    def start_proxy(self, upstreams: list[Target]) -> dict[str, Target]:
        """One plain nginx with a server block per upstream; returns a proxied Target per upstream name."""
        blocks, ports = [], {}
        for i, up in enumerate(upstreams):
            port = free_port()
            ports[up.name] = port
            blocks.append(f"""
    upstream up{i} {{
        server 127.0.0.1:{up.port};
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://up{i};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}""")
        conf = self._nginx_conf("proxy", "".join(blocks))
        proxy = Proc("nginx proxy", pinned(self.args.proxy_cpu, self._nginx_argv(conf)), self.logs / "nginx-proxy.log",
                     env=self.env)
        proxied: dict[str, Target] = {}
        for up in upstreams:
            target = Target(name=f"nginx → {up.name}", port=ports[up.name], proc=proxy, fixed=up.fixed)
            try:
                wait_http(target.port, "/" if up.fixed else "/healthz", proxy, self.args.start_timeout)
                target.answers = check_answers(target.port, CALC_APP, up.fixed)
            except (RuntimeError, OSError) as exc:
                target.error = str(exc).splitlines()[-1][:200]
            proxied[up.name] = target
        return proxied

    def start_template_proxy(self, up: Target) -> Target:
        """The project's own nginx/templates/default.conf.template in front of ``up``.

        Rendered the way envsubst does in the images (and tests/harness/nginx.py natively): request ids,
        the JSON access log (to /dev/null here: formatted and written per request, not kept), the
        rate-limit zone. Only the rate is raised, so that one benchmarking client is not answered 429.
        """
        port = free_port()
        values = {"CALC_UPSTREAM": f"127.0.0.1:{up.port}", "NGINX_LISTEN": f"127.0.0.1:{port}",
                  "NGINX_RATE_LIMIT": "10000000r/s", "NGINX_RATE_BURST": "10000000", "NGINX_MAX_BODY_SIZE": "1m",
                  # the compose stack's values; the resolver is unused here, the upstream being an address
                  "NGINX_RESOLVER": "127.0.0.11", "NGINX_RESOLVE_VALID": "1s", "NGINX_CONNECT_TIMEOUT": "50ms",
                  "NGINX_FAIL_TIMEOUT": "10s"}
        text = TEMPLATE.read_text()
        rendered = re.sub(r"\$\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)
        missing = sorted(set(re.findall(r"\$\{(\w+)\}", rendered)))
        if missing:
            return Target(name=f"nginx template → {up.name}", error=f"no value for {', '.join(missing)}")
        safe = re.sub(r"[^A-Za-z0-9]+", "-", up.name)
        base = (self.logs / f"nginx-template-{safe}").resolve()
        base.mkdir(parents=True, exist_ok=True)
        (base / "default.conf").write_text(rendered)
        conf = self._nginx_conf(f"template-{safe}", f"    include {base / 'default.conf'};")
        target = Target(name=f"nginx template → {up.name}", port=port)
        proc = Proc(target.name, pinned(self.args.proxy_cpu, self._nginx_argv(conf)),
                    self.logs / f"nginx-template-{safe}.log", env=self.env, discard_stdout=True)
        target.proc = proc
        try:
            wait_http(port, "/nginx-health", proc, self.args.start_timeout)
            wait_http(port, "/healthz", proc, self.args.start_timeout)
            target.answers = check_answers(port, CALC_APP)
        except (RuntimeError, OSError) as exc:
            target.error = str(exc).splitlines()[-1][:200]
        return target

    def _nginx_conf(self, name: str, servers: str) -> Path:
        base = (self.logs / f"nginx-{name}").resolve()
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)  # started as root, nginx's workers are nobody and need the temp directories
        temp = "".join(f"    {kind}_temp_path {base}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = base / "nginx.conf"
        conf.write_text(f"""# generated by loadtest/bench (scripts/bench)
worker_processes 1;
daemon off;
master_process on;
pid {base}/nginx.pid;
error_log {base}/error.log warn;
worker_rlimit_nofile 40000;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
{temp}{servers}
}}
""")
        return conf

    @staticmethod
    def _nginx_argv(conf: Path) -> list[str]:
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-e", "stderr", "-p", str(conf.parent), "-c", str(conf)]

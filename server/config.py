"""Every setting in one table: default, command-line flag, environment variable and help.

The table is the single source of truth: ``--help``, the configuration page's
table and the environment lookup are all generated from ``OPTIONS``, so a
setting cannot exist in one place and be missing from another.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from . import __version__
from .bindspec import parse_bind
from .protocol import Limits

ENV_PREFIX = "CALC_"
_PARSER = Limits()  # the parser's own defaults, so the numbers live in one place


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false (also 1/0, yes/no, on/off)")


def _int(text: str) -> int:
    """A whole number; Python's own message ("invalid literal for int() with base 10") helps no one."""
    try:
        return int(text)
    except ValueError:
        raise ValueError("expected a whole number") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


# Upper bounds for the two sizes a typo turns into an outage: 99999999 workers is a fork storm that
# takes the machine down (tried: a load average of 2,600 before it was killed), 99999999999 threads a
# list of seats that eats memory before the first thread starts. Far above any real need: a process
# serves 10,000 idle connections with 8 threads, and the usual advice is 2-4 workers per core.
MAX_THREADS = 4096
MAX_WORKERS = 1024


def _bounded_int(highest: int, why: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _positive_int(text)
        if value > highest:
            raise ValueError(f"must be at most {highest} ({why}), got {value}")
        return value

    return parse


def _non_negative_int(text: str) -> int:
    value = _int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _backlog(text: str) -> int:
    """listen(2) takes a C int; the kernel lowers anything above net.core.somaxconn to that by itself."""
    value = _positive_int(text)
    if value > 2**31 - 1:
        raise ValueError(f"must be at most {2**31 - 1}, got {value}")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be 0..65535, got {value}")
    return value


# Longest timeout or delay accepted, in seconds (about 11.6 days): far beyond any useful one, and
# within what poll(2) takes (milliseconds in a C int) and what thread waits take.
MAX_SECONDS = 1_000_000


def _number_of_seconds(text: str, example: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, such as {example}") from None
    if value > MAX_SECONDS:  # inf too; NaN is refused by the callers' lower bounds
        raise ValueError(f"must be at most {MAX_SECONDS} seconds (about 11 days), got {text}")
    return value


def _seconds(text: str) -> float:
    value = _number_of_seconds(text, "30 or 0.5")
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, got {text}")
    return value


def _non_negative_seconds(text: str) -> float:
    value = _number_of_seconds(text, "5 or 0 for none")
    if not value >= 0:
        raise ValueError(f"must be 0 or a positive number of seconds, got {text}")
    return value


def _header_value(text: str) -> str:
    """Printable ASCII only: it is written into every response head as it is."""
    if not all(" " <= c <= "~" for c in text):
        raise ValueError(f"must be printable ASCII, got {text!r}")
    return text.strip()


def _networks(text: str) -> tuple[str, ...]:
    """A comma list of addresses or CIDR blocks; ``*`` trusts every peer."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in items:
        if item != "*":
            ipaddress.ip_network(item, strict=False)
    return items


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT`` into its parts; ValueError says what is wrong."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT (for example 127.0.0.1:9100), got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"an IPv6 address needs brackets, as in [::1]:9100; got {text!r}")
    if not port.isdigit():
        raise ValueError(f"port must be a number, got {port!r}")
    return host, _port(port)


def _optional_bind(text: str) -> str:
    """Empty (off) or a valid HOST:PORT."""
    text = text.strip()
    if text:
        split_host_port(text)
    return text


def _binds(text: str) -> tuple[str, ...]:
    """Listen addresses, comma separated; each checked for its form here, so a typo fails before startup."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ValueError("expected at least one address")
    for item in items:
        try:
            parse_bind(item)
        except ValueError as exc:
            raise ValueError(f"{item!r}: {exc}" if len(items) > 1 else str(exc)) from None
    return items


def _log_path(text: str) -> str:
    """``-`` or a path; an empty value would otherwise open the current directory."""
    if not text.strip():
        raise ValueError("expected - (standard stream) or a file path")
    return text


def _umask(text: str) -> str:
    """Octal, as the umask command takes it; kept as text so the default (unset) reads as such."""
    text = text.strip()
    try:
        value = int(text, 8)
    except ValueError:
        raise ValueError(f"expected an octal file mode mask such as 077, got {text!r}") from None
    if not 0 <= value <= 0o777:
        raise ValueError(f"must be 000..777, got {text}")
    return text


def _paths(text: str) -> tuple[str, ...]:
    """URL paths, comma separated, each starting with ``/`` (compared with the request's path, query left out)."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    for item in items:
        if not item.startswith("/"):
            raise ValueError(f"a path starts with /, got {item!r}")
    return items


def _access_log_format(text: str) -> str:
    from .accesslog import check_format  # imported here: the access log's own module knows its atoms

    return check_format(text.strip() if text.strip() in ("combined", "json") else text)


def _log_level(text: str) -> str:
    value = text.strip().lower()
    if value not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"expected debug, info, warning, error or critical, got {text!r}")
    return value


def _optional_path(text: str) -> str:
    return text.strip()


def _cert_reqs(text: str) -> str:
    value = text.strip().lower()
    if value not in ("none", "optional", "required"):
        raise ValueError(f"expected none, optional or required, got {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class Option:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str  # for a bool option: what --NAME does; --no-NAME does the opposite
    repeat: bool = False  # the flag may be given several times; the values (tuples) add up
    short: str = ""  # a one-letter alias such as -b
    group: str = "other"  # the topic it is listed under in --help and docs/configuration.md (GROUPS)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def is_switch(self) -> bool:
        """A bool default makes a switch: --NAME and --no-NAME, so a flag can undo the environment."""
        return isinstance(self.default, bool)

    @property
    def negative_flag(self) -> str:
        return "--no-" + self.name.replace("_", "-")


# The topics of --help and of the configuration page, in their order; an Option names one in ``group``.
GROUPS: tuple[tuple[str, str], ...] = (
    ("application", "The application"),
    ("listening", "Listening"),
    ("tls", "TLS"),
    ("proxies", "Behind a proxy"),
    ("processes", "Processes and threads"),
    ("timeouts", "Timeouts"),
    ("limits", "Limits"),
    ("logging", "Logging"),
    ("metrics", "Metrics"),
    ("other", "Other"),
)

OPTIONS: tuple[Option, ...] = (
    Option("host", "127.0.0.1", str, "Address to bind; 0.0.0.0 for every IPv4 interface, :: for IPv6.",
           group="listening"),
    Option("port", 8000, _port, "TCP port to bind; 0 picks a free one (the ready line shows it).", group="listening"),
    Option("app", "server.calculator:app", str, "WSGI application to serve, as module:callable.", group="application"),
    Option("threads", 8, _bounded_int(MAX_THREADS, "threads per process; idle connections need none"),
           f"Worker threads per process that run the application (at most {MAX_THREADS}).", group="processes"),
    Option("workers", 1, _bounded_int(MAX_WORKERS, "processes; the usual advice is 2-4 per core"),
           f"Processes (at most {MAX_WORKERS}); above 1 a master pre-forks them on one shared socket and "
           "replaces any that die.",
           group="processes"),
    Option("backlog", 2048, _backlog, "Listen backlog: connections the kernel queues before accept.",
           group="listening"),
    Option("max_connections", 10000, _positive_int,
           "Open connections per process; beyond it new ones get an immediate 503 and are closed.", group="limits"),
    Option("keepalive_timeout", 75.0, _seconds,
           "Seconds an idle keep-alive connection is kept open (above nginx's upstream 60 s).", group="timeouts"),
    Option("header_timeout", 10.0, _seconds,
           "Seconds a client has to send a complete request head once it started one.", group="timeouts"),
    Option("body_timeout", 30.0, _seconds, "Seconds the body may stall between two reads.", group="timeouts"),
    Option("handshake_timeout", 5.0, _seconds,
           "Seconds a TLS client has to complete its handshake after connecting (it holds a connection slot "
           "meanwhile); also bounds the handshake of a connection refused over --max-connections.", group="timeouts"),
    Option("send_timeout", 30.0, _seconds,
           "Seconds a response write may stall before the client is dropped (slow readers).", group="timeouts"),
    Option("graceful_timeout", 30.0, _seconds,
           "Seconds in-flight requests get to finish after SIGTERM/SIGINT before the process exits.", group="timeouts"),
    Option("drain_delay", 0.0, _non_negative_seconds,
           "Lame duck: seconds the server keeps accepting and answering after SIGTERM/SIGINT before it stops "
           "accepting, each answer with Connection: close and /healthz saying 503 draining, so a proxy or "
           "orchestrator can take it out of rotation first; 0 (default) stops accepting at once. Under a master "
           "every worker drains together; a worker only being replaced (reload, --max-requests) does not.",
           group="timeouts"),
    Option("max_request_line", _PARSER.max_request_line, _positive_int, "Longest request line in bytes (414 beyond).",
           group="limits"),
    Option("max_header_count", _PARSER.max_header_count, _positive_int,
           "Most header fields in one request (431 beyond).", group="limits"),
    Option("max_header_size", _PARSER.max_header_size, _positive_int,
           "Longest single header field line in bytes (431 beyond).", group="limits"),
    Option("max_headers_total", _PARSER.max_headers_total, _positive_int,
           "Most bytes in the whole request head (431 beyond).", group="limits"),
    Option("max_body_size", _PARSER.max_body_size, _non_negative_int,
           "Largest request body in bytes, Content-Length or chunked (413 beyond).", group="limits"),
    Option("max_body_in_memory", _PARSER.max_body_in_memory, _non_negative_int,
           "Bytes of one request body held in memory while it arrives; the rest waits in an anonymous "
           "temporary file (in TMPDIR) until the application reads it, so memory per connection stays bounded.",
           group="limits"),
    Option("max_chunk_ext", _PARSER.max_chunk_ext, _positive_int,
           "Longest chunk-extension / chunk-size line in bytes.", group="limits"),
    Option("max_pipeline", 32, _positive_int,
           "Requests a client may queue on one connection before the server stops reading from it.", group="limits"),
    Option("forwarded_allow_ips", ("127.0.0.1", "::1"), _networks,
           "Peers (addresses or CIDR, * for any) whose X-Forwarded-For/-Proto are trusted.", group="proxies"),
    Option("access_log", True, _bool,
           "Write one access-log line per request to stdout; --no-access-log writes none.", group="logging"),
    Option("server_header", "calc-server", _header_value, "Value of the Server response header; empty to omit it.",
           group="application"),
    # --- binding anywhere ---
    Option("bind", (), _binds,
           "Listen address, repeatable: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N (comma separated in the "
           "environment). Given, it replaces --host/--port; sockets passed by systemd are always served.",
           repeat=True, short="-b", group="listening"),
    Option("umask", "", _umask,
           "Octal mask applied to the mode of Unix socket files this server creates (077: owner only); "
           "unset keeps the process umask.", group="listening"),
    # --- metrics ---
    Option("metrics_bind", "", _optional_bind,
           "HOST:PORT of a separate listener serving Prometheus metrics at /metrics; empty (default) for none.",
           group="metrics"),
    # --- TLS and the PROXY protocol ---
    Option("certfile", "", str, "PEM certificate (chain); when set, TCP listeners speak TLS (https).", group="tls"),
    Option("keyfile", "", str, "PEM private key; empty when it is in the certfile.", group="tls"),
    Option("keyfile_password_file", "", str, "File whose first line is the private key's passphrase.", group="tls"),
    Option("ca_certs", "", str, "PEM bundle of the CAs that client certificates must chain to.", group="tls"),
    Option("cert_reqs", "none", _cert_reqs,
           "Client certificates: none, optional (verified if sent) or required; needs --ca-certs unless none.",
           group="tls"),
    Option("ciphers", "", str, "OpenSSL cipher list for TLS 1.2; empty for OpenSSL's defaults.", group="tls"),
    Option("proxy_protocol", False, _bool,
           "Peers in --forwarded-allow-ips must open with a PROXY protocol v1/v2 header; its address is the client.",
           group="proxies"),
    # --- process management: reload, recycle, worker timeout, log files ---
    Option("master", False, _bool,
           "Supervise even one worker from a master process, so SIGHUP reloads the code without downtime "
           "(implied by --workers above 1, --reload and --max-requests).", group="processes"),
    Option("max_requests", 0, _non_negative_int,
           "Replace a worker gracefully after it served this many requests (plus jitter); 0 never does.",
           group="processes"),
    Option("max_requests_jitter", 0, _non_negative_int,
           "Up to this many requests added at random to each worker's --max-requests, so they do not all "
           "recycle at once.", group="processes"),
    Option("worker_timeout", 30.0, _seconds,
           "Seconds a worker's event loop may miss its heartbeat before the master kills and replaces it "
           "(master mode); a slow request does not count.", group="processes"),
    Option("reload", False, _bool,
           "Development: watch the application's .py files and reload the workers when one changes.",
           group="processes"),
    Option("access_logfile", "-", _log_path, "Access-log destination: - for stdout, or a file (SIGUSR1 reopens it).",
           group="logging"),
    Option("error_logfile", "-", _log_path, "Error-log destination: - for stderr, or a file (SIGUSR1 reopens it).",
           group="logging"),
    # --- logs, pid file, imports ---
    Option("access_log_format", "combined", _access_log_format,
           "Access-log line: combined (Apache's, plus duration and request id), json (one object per line, "
           "nginx's field names) or a gunicorn-style template of %(atom)s fields such as '%(h)s \"%(r)s\" %(s)s'; "
           "json also makes the error log JSON.", group="logging"),
    Option("access_log_exclude", (), _paths,
           "Path left out of the access log, repeatable (comma separated in the environment), such as /healthz; "
           "compared with the request's path without its query.", repeat=True, group="logging"),
    Option("log_level", "info", _log_level,
           "Least severe error-log lines written: debug, info, warning, error or critical.", group="logging"),
    Option("pid", "", _optional_path,
           "Write the server's process id to this file once it listens; removed when it exits. Empty: no file.",
           group="processes"),
    Option("chdir", "", _optional_path,
           "Change to this directory before loading the application (which is imported from the current "
           "directory first, as python3 -m does).", group="application"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Resolved settings; built by ``load`` or directly in tests."""

    host: str = "127.0.0.1"
    port: int = 8000
    app: str = "server.calculator:app"
    threads: int = 8
    workers: int = 1
    backlog: int = 2048
    max_connections: int = 10000
    keepalive_timeout: float = 75.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    handshake_timeout: float = 5.0
    send_timeout: float = 30.0
    graceful_timeout: float = 30.0
    drain_delay: float = 0.0
    max_request_line: int = _PARSER.max_request_line
    max_header_count: int = _PARSER.max_header_count
    max_header_size: int = _PARSER.max_header_size
    max_headers_total: int = _PARSER.max_headers_total
    max_body_size: int = _PARSER.max_body_size
    max_body_in_memory: int = _PARSER.max_body_in_memory
    max_chunk_ext: int = _PARSER.max_chunk_ext
    max_pipeline: int = 32
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    access_log: bool = True
    server_header: str = "calc-server"
    # --- binding anywhere ---
    bind: tuple[str, ...] = ()
    umask: str = ""
    # --- metrics ---
    metrics_bind: str = ""
    # --- TLS and the PROXY protocol ---
    certfile: str = ""
    keyfile: str = ""
    keyfile_password_file: str = ""
    ca_certs: str = ""
    cert_reqs: str = "none"
    ciphers: str = ""
    proxy_protocol: bool = False
    # --- process management: reload, recycle, worker timeout, log files ---
    master: bool = False
    max_requests: int = 0
    max_requests_jitter: int = 0
    worker_timeout: float = 30.0
    reload: bool = False
    access_logfile: str = "-"
    error_logfile: str = "-"
    # --- logs, pid file, imports ---
    access_log_format: str = "combined"
    access_log_exclude: tuple[str, ...] = ()
    log_level: str = "info"
    pid: str = ""
    chdir: str = ""

    @property
    def supervised(self) -> bool:
        """Whether a master process runs the workers (see server/transport/arbiter.py)."""
        return self.master or self.workers > 1 or self.reload or self.max_requests > 0

    def limits(self) -> Limits:
        """The parser's share of the settings."""
        return Limits(max_request_line=self.max_request_line, max_header_count=self.max_header_count,
                      max_header_size=self.max_header_size, max_headers_total=self.max_headers_total,
                      max_body_size=self.max_body_size, max_body_in_memory=self.max_body_in_memory,
                      max_chunk_ext=self.max_chunk_ext)


def _check_table() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(Settings)}
    table = {o.name: o.default for o in OPTIONS}
    if fields != table:  # pragma: no cover - guards edits to either side
        raise RuntimeError(f"Settings and OPTIONS disagree: {fields} != {table}")


_check_table()


def _render_default(option: Option) -> str:
    if isinstance(option.default, tuple):
        return ",".join(option.default)
    if isinstance(option.default, bool):
        return "true" if option.default else "false"
    return str(option.default)


def _explain(exc: ValueError) -> str:
    """What was expected, also from a bare ``int``/``float`` used as a parser."""
    text = str(exc)
    if text.startswith("invalid literal for int()"):
        return "expected a whole number"
    if text.startswith("could not convert string to float"):
        return "expected a number"
    return text


def _flag_parser(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse shows only the type's name for a ValueError; this passes on what was wrong."""

    def checked(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {_explain(exc)}") from None

    return checked


DOCS = "docs/configuration.md"


class _Parser(argparse.ArgumentParser):
    """argparse with a usage error that fits on a screen: the error, then where to read more."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n"
                     f"See '{self.prog} --help' for the options by topic, or {DOCS}.\n")


def build_parser() -> argparse.ArgumentParser:
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    parser = _Parser(
        prog="calc-server" if invoked == "calc-server" else "python3 -m server",
        usage="%(prog)s [OPTION ...]",
        description="A threaded HTTP/1.1 WSGI server written from raw sockets; serves the calculator by default.",
        epilog=f"Every option can also be set from the environment: {ENV_PREFIX}<NAME> "
        f"(for example {ENV_PREFIX}PORT=8080, {ENV_PREFIX}ACCESS_LOG=false). Flags win over the environment. "
        f"More in {DOCS}.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"calc-server {__version__}")
    sections = {key: parser.add_argument_group(title) for key, title in GROUPS}
    for option in OPTIONS:
        section = sections.get(option.group, sections["other"])
        default = _render_default(option) or "(none)"
        help_text = f"{option.help} [env {option.env}, default {default}]".replace("%", "%%")
        if option.repeat:
            section.add_argument(*filter(None, (option.short, option.flag)), dest=option.name, action="append",
                                 type=_flag_parser(option.parse), default=None, metavar=option.name.upper(),
                                 help=help_text)
        elif option.is_switch:
            section.add_argument(option.flag, dest=option.name, action=argparse.BooleanOptionalAction,
                                 default=None, help=help_text)
        else:
            section.add_argument(option.flag, dest=option.name, type=_flag_parser(option.parse),
                                 default=None, metavar=option.name.upper(), help=help_text)
    return parser


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Defaults, overridden by the environment, overridden by flags."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.name)
        if option.repeat and value is not None:
            value = tuple(item for given in value for item in given)  # -b A -b B,C: every one of them
        if value is None and option.env in environ:
            try:
                value = option.parse(environ[option.env])
            except ValueError as exc:
                parser.error(f"{option.env}={environ[option.env]!r}: {_explain(exc)}")
        values[option.name] = option.default if value is None else value
    return Settings(**values)


def markdown_table() -> str:
    """The settings of docs/configuration.md, one table per topic as in --help (scripts/docs-generate writes it)."""
    out: list[str] = []
    for key, title in GROUPS:
        options = [option for option in OPTIONS if option.group == key]
        if not options:
            continue
        out += ["", f"### {title}", "", "| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
        for option in options:
            flag = (f"`{option.short}`, " if option.short else "") + f"`{option.flag}`"
            flag += f" / `{option.negative_flag}`" if option.is_switch else ""
            default = _render_default(option)
            default = f"`{default}`" if default else "(none)"  # an empty code span would show as two backticks
            meaning = option.help.replace("|", "\\|")
            out.append(f"| {flag} | `{option.env}` | {default} | {meaning} |")
    return "\n".join(out[1:])

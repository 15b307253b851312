"""What the tests drive the real programs with; tests/conftest.py turns these into fixtures.

- ``server``: ``python3 -m server`` as a child process on a free loopback port (``start_server``).
- ``client``: a raw socket client with a reader of its own (``RawClient``), ``get`` and ``fetch``.
- ``nginx``: native nginx with the repository's reverse-proxy config (``start_nginx``).
- ``certificates``: a throw-away CA and certificates for the TLS tests (``make_tls_files``).
- ``stalling``: many connections that begin a request or handshake and never finish it.
- ``processes``: threads, descriptors and children of a process, from /proc.
- ``parsers``: request parsers with a server's HeaderCache or without (``parser_factory``).
- ``tools``: the checkout's root, CI or not, required programs, ``wait_until``.

Tests import from here (``from harness import RawClient, get``): tests/ is on sys.path.
"""

from .certificates import TLSFiles, make_tls_files, make_tls_files_with
from .client import RawClient, ReceiveQueue, fetch, get, read_to_eof
from .nginx import NGINX_DEFAULTS, NGINX_TEMPLATE, NginxProxy, render_nginx_template, start_nginx
from .parsers import PARSER_CACHES, parser_factory
from .processes import proc_children, proc_cpu_seconds, proc_cpu_seconds_exact, proc_fds, proc_rss, proc_threads
from .server import LISTENING, READY, ServerProcess, both_listeners, start_server
from .stalling import StallingClients
from .tools import IN_CI, ROOT, require_tool, wait_until

__all__ = [
    "IN_CI",
    "LISTENING",
    "NGINX_DEFAULTS",
    "NGINX_TEMPLATE",
    "PARSER_CACHES",
    "READY",
    "ROOT",
    "NginxProxy",
    "RawClient",
    "ReceiveQueue",
    "ServerProcess",
    "StallingClients",
    "TLSFiles",
    "both_listeners",
    "fetch",
    "get",
    "make_tls_files",
    "make_tls_files_with",
    "parser_factory",
    "proc_children",
    "proc_cpu_seconds",
    "proc_cpu_seconds_exact",
    "proc_fds",
    "proc_rss",
    "proc_threads",
    "read_to_eof",
    "render_nginx_template",
    "require_tool",
    "start_nginx",
    "start_server",
    "wait_until",
]

"""The fixtures, over the harnesses in tests/harness/ (servers, clients, nginx, certificates).

Every fixture that starts something stops it after the test (or the session, where scoped so).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from harness import (
    PARSER_CACHES,
    NginxProxy,
    RawClient,
    ServerProcess,
    TLSFiles,
    make_tls_files,
    make_tls_files_with,
    parser_factory,
    start_nginx,
    start_server,
)


@pytest.fixture(scope="module", params=PARSER_CACHES)
def both_parser_caches(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a protocol test module's tests twice: its ``RequestParser`` with a server's HeaderCache, then without.

    Use as ``pytestmark = pytest.mark.usefixtures("both_parser_caches")`` (or on single tests); the
    module's own name ``RequestParser`` is replaced for the duration (harness/parsers.py).
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(request.module, "RequestParser", parser_factory(request.param))
        yield request.param


@pytest.fixture
def listener_kind() -> str:
    """"plain" for every test; a test parametrized with ``both_listeners`` runs once more with "tls"."""
    return "plain"


@pytest.fixture
def server_factory(listener_kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with custom flags; all are stopped after the test.

    Under ``listener_kind == "tls"`` each server gets the test certificate and key, and its
    ``connect()`` (and ``raw_factory``) speak TLS to it.
    """
    started: list[ServerProcess] = []
    certs = request.getfixturevalue("tls_certs") if listener_kind == "tls" else None

    def factory(*args: str, **kwargs: Any) -> ServerProcess:
        if certs is not None:
            args = (*args, "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key))
        server = start_server(*args, **kwargs)
        if certs is not None:
            server.tls = certs.client_context()
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop(timeout=10)


@pytest.fixture(scope="session")
def calc_server() -> Iterator[ServerProcess]:
    """One calculator server shared by the API tests (access log off to keep output small)."""
    server = start_server("--no-access-log", "--threads", "8")
    yield server
    server.stop()


@pytest.fixture
def raw(calc_server: ServerProcess) -> Iterator[RawClient]:
    """A raw TCP connection to the shared calculator server."""
    client = RawClient.connect(calc_server.address)
    yield client
    client.close()


@pytest.fixture
def raw_factory(listener_kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., RawClient]]:
    """Open raw connections to any address (over TLS when the test runs on TLS listeners); closed after the test."""
    opened: list[RawClient] = []
    tls = request.getfixturevalue("tls_certs").client_context() if listener_kind == "tls" else None

    def factory(address: tuple[str, int], timeout: float = 5.0) -> RawClient:
        client = RawClient.connect(address, timeout=timeout, tls=tls)
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.close()


@pytest.fixture
def nginx_proxy() -> Iterator[Callable[..., NginxProxy]]:
    """Start native nginx with the repo's proxy config in front of an upstream; each is stopped after the test.

    ``url = nginx_proxy(server.address)`` (or ``"host:port"``); ``workers=2`` and template values such as
    ``NGINX_RATE_LIMIT="1r/m"`` are keyword arguments. The result is the base URL (a ``str``) with
    ``.port``, ``.lines`` (JSON access log), ``.errors``, ``.access_log()`` and ``.stop()`` attached.
    """
    started: list[NginxProxy] = []

    def factory(upstream: str | tuple[str, int], **kwargs: Any) -> NginxProxy:
        proxy = start_nginx(upstream, **kwargs)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.stop()


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    """One CA, server and client certificate for the whole session (generated, never checked in)."""
    try:
        import cryptography  # noqa: F401
    except ImportError:
        helper = os.environ.get("CALC_CERT_PYTHON")  # an interpreter that has it (scripts/lib/matrix.sh)
        if helper:
            return make_tls_files_with(helper, tmp_path_factory.mktemp("tls"))
        pytest.skip("the TLS tests make their certificates with cryptography")
    return make_tls_files(tmp_path_factory.mktemp("tls"))

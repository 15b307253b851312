"""Prometheus HTTP service discovery for the compose stack: every server replica, named after its container.

Prometheus's own DNS discovery finds the replicas (Docker's DNS answers ``server`` with one
address per replica) but can only label them with that address, which says nothing to a
person and changes when a replica restarts. Docker's DNS also answers the reverse question:
the PTR record of a container's address is ``<container name>.<network>``. This WSGI
application asks both and answers Prometheus's ``http_sd_configs`` with one target group per
replica, labelled ``container="<project>-server-<n>"``, so a graph or alert names the replica
as ``docker ps`` and ``docker compose logs`` do.

It needs no privileges and no Docker socket: that is the trade-off against Prometheus's
``docker_sd_configs``. Tried on this stack, that labels the targets just as well (relabelling
``__meta_docker_container_name``), but only with /var/run/docker.sock mounted into Prometheus
and Prometheus's user added to the host's docker group, whose id differs per host (106 here),
so the compose file cannot say it; whoever holds that socket controls the host (a ``:ro``
mount does not make the API read-only); and its label filter sees every compose project's
``server`` on the host unless it also names this project. The price here is one small
container, and names only (no other container labels).

Served by calc-server itself (docker-compose.yml's ``replica-targets`` service):
``GET /targets`` is the discovery document, ``GET /healthz`` the health check. Settings from
the environment: TARGETS_SERVICE (``server``), TARGETS_PORT (``9100``, the metrics port).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

SERVICE = os.environ.get("TARGETS_SERVICE", "server")
PORT = os.environ.get("TARGETS_PORT", "9100")


def replicas(service: str = SERVICE) -> list[tuple[str, str]]:
    """(address, container name) of every replica Docker's DNS knows now; the address where no name comes back."""
    try:
        infos = socket.getaddrinfo(service, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []  # no replica running at the moment
    found = []
    for address in sorted({info[4][0] for info in infos}, key=socket.inet_aton):
        try:
            name = socket.gethostbyaddr(address)[0].split(".", 1)[0]  # <container>.<network>
        except OSError:
            name = address
        found.append((address, name))
    return found


def target_groups(service: str = SERVICE, port: str = PORT) -> list[dict[str, Any]]:
    return [{"targets": [f"{address}:{port}"], "labels": {"container": name}}
            for address, name in replicas(service)]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    if method not in ("GET", "HEAD"):
        status, body = "405 Method Not Allowed", b'{"error":"GET only"}'
    elif path == "/targets":
        status, body = "200 OK", json.dumps(target_groups()).encode()
    elif path == "/healthz":
        status, body = "200 OK", b'{"status":"ok"}'
    else:
        status, body = "404 Not Found", b'{"error":"GET /targets or /healthz"}'
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    if status.startswith("405"):
        headers.append(("Allow", "GET, HEAD"))
    start_response(status, headers)
    return [body]

"""Deadlines: the connections nobody is serving that have waited too long, and what happens to them.

The main thread runs the sweep every ``SWEEP_EVERY`` (monitor.py). It claims each connection with
``try_claim``, so a connection a worker owns is being served and is skipped: the sweep never waits
for a worker, and a timeout is enforced up to one sweep late. For a connection it claims:

- a lingering close past its drain deadline is closed;
- a TLS handshake not done within ``--handshake-timeout`` (or ``--header-timeout``, if shorter) of
  accept is closed: a client that never starts one holds a connection slot only that long;
- a parked connection (answers the client does not take) that made no progress for
  ``--send-timeout`` is closed;
- an idle connection past ``--keepalive-timeout`` (``--header-timeout`` before its first request)
  is closed;
- a request head not complete within ``--header-timeout`` of its first byte gets 408;
- a body stalled for more than ``--body-timeout`` gets 408.
"""

from __future__ import annotations

from typing import Protocol

from ..config import Settings
from ..protocol import Phase, ProtocolError
from .connection import Connection
from .table import ConnectionTable

SWEEP_EVERY = 0.25  # seconds between sweeps
SWEEPER = "sweep"  # the owner a connection has while the sweep looks at it


class ConnectionActions(Protocol):
    """What the sweep may do to a connection it owns (the reactor's)."""

    def close_connection(self, conn: Connection) -> None: ...

    def reject(self, conn: Connection, error: ProtocolError, now: float) -> object: ...

    def let_go(self, conn: Connection) -> None: ...


class Sweeper:
    """The timeouts of one serving process; runs on the main thread only."""

    def __init__(self, table: ConnectionTable, settings: Settings, actions: ConnectionActions) -> None:
        self.table = table
        self.settings = settings
        self.actions = actions

    def sweep(self, now: float) -> int:
        """Enforce every deadline that has passed; returns how many connections are idle (for metrics)."""
        settings = self.settings
        actions = self.actions
        idle = 0
        for conn in self.table.snapshot():
            if not conn.try_claim(SWEEPER):
                continue  # a worker is serving it
            try:
                if conn.closed:
                    continue
                if conn.draining:
                    if now >= conn.drain_deadline:
                        actions.close_connection(conn)
                elif not conn.handshake_done:
                    # The handshake is part of getting the first request: the shorter deadline applies.
                    if now - conn.idle_since > min(settings.handshake_timeout, settings.header_timeout):
                        actions.close_connection(conn)
                elif conn.parked:
                    if now - conn.parked_since > settings.send_timeout:
                        actions.close_connection(conn)  # the client stopped reading its answers
                else:
                    idle += self._request_deadlines(conn, now)
            finally:
                actions.let_go(conn)
        return idle

    def _request_deadlines(self, conn: Connection, now: float) -> int:
        settings = self.settings
        phase = conn.parser.phase
        if phase is Phase.IDLE:
            limit = settings.keepalive_timeout if conn.served else settings.header_timeout
            if now - conn.idle_since > limit:
                self.actions.close_connection(conn)
                return 0
            return 1
        if phase is Phase.HEAD:
            started = conn.head_started or conn.idle_since
            if now - started > settings.header_timeout:
                self.actions.reject(conn, ProtocolError(
                    408, f"request head not received within {settings.header_timeout:g} s"), now)
        elif now - conn.last_io > settings.body_timeout:
            self.actions.reject(conn, ProtocolError(
                408, f"request body stalled for more than {settings.body_timeout:g} s"), now)
        return 0

"""Many client connections that begin something and never finish it, all watched by one thread.

The slow-client tests open a thousand of these (a request head trickled a byte at a time, a TLS
handshake stopped halfway) and check that the server keeps serving everyone else and closes each
one at its timeout. A subclass says what each connection sends: ``opening`` once, right after it
connects, and ``more`` each round after that.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time


class StallingClients:
    """``count`` connections to ``address``, run by ``thread`` until all are closed or ``deadline`` passes.

    ``started`` is set once every connection is open and has sent its opening. Per connection (by its
    number) the thread records when that happened (``opened``), everything the server sent
    (``received``) and when the server closed it, by EOF or reset (``closed_at``).
    """

    def __init__(self, address: tuple[str, int], count: int, deadline: float, *, interval: float = 0.1,
                 name: str = "stalling-clients") -> None:
        self.address = address
        self.count = count
        self.deadline = deadline
        self.interval = interval  # seconds between rounds of ``more``
        self.started = threading.Event()
        self.opened: dict[int, float] = {}
        self.closed_at: dict[int, float] = {}
        self.received: dict[int, bytes] = {}
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def opening(self, i: int) -> bytes:
        """What connection ``i`` sends as soon as it is connected (nothing: a silent client)."""
        return b""

    def more(self, i: int, round_number: int) -> bytes:
        """What connection ``i`` sends in round 1, 2, ... while it is open (nothing by default)."""
        return b""

    def _run(self) -> None:
        socks: dict[int, socket.socket] = {}
        selector = selectors.DefaultSelector()
        try:
            for i in range(self.count):
                sock = socket.create_connection(self.address, timeout=5)
                socks[i] = sock
                opening = self.opening(i)
                if opening:
                    sock.sendall(opening)
                self.opened[i] = time.monotonic()
                self.received[i] = b""
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ, i)
            self.started.set()
            round_number = 1
            next_round = time.monotonic() + self.interval
            while len(self.closed_at) < self.count and time.monotonic() < self.deadline:
                for key, _ in selector.select(timeout=max(0.0, next_round - time.monotonic())):
                    self._read(key.data, socks[key.data], selector)
                if time.monotonic() >= next_round:
                    for i, sock in socks.items():
                        data = self.more(i, round_number) if i not in self.closed_at else b""
                        if data:
                            try:
                                sock.send(data)
                            except BlockingIOError:
                                pass
                            except OSError:
                                self._closed(i, sock, selector)
                    round_number += 1
                    next_round += self.interval
        finally:
            self.started.set()
            selector.close()
            for sock in socks.values():
                sock.close()

    def _read(self, i: int, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.received[i] += data
        else:
            self._closed(i, sock, selector)

    def _closed(self, i: int, sock: socket.socket, selector: selectors.BaseSelector) -> None:
        if i not in self.closed_at:
            self.closed_at[i] = time.monotonic()
            selector.unregister(sock)

"""A model-based test of the transport: random client behaviour over real sockets, checked against a model.

A hypothesis state machine drives several clients of one running server at
once: requests sent whole or in random splits with pauses, pipelined, with
bodies (Content-Length and chunked), half-finished requests, malformed ones,
``Connection: close``, half-closes, partial reads and resets. The model keeps,
per client, the answers it must get: one per complete request, in order, a 400
for a malformed request or for one cut off by the client's EOF, nothing after
an answer that ends the connection, and then the close. Every read is checked
against that prefix; at the end of each run every client half-closes and must
receive exactly the rest, then EOF. After all runs the server still answers and
its threads and descriptors are back to their baseline.

Whether batched writes were exercised is not visible to any one client (they
change when answers are written, not what is written), so the server runs
``tests/apps.py:batch_counting``, which wraps the reactor's batch flush in the
server process and reports how many batches held answers of two or more
connections; the test asserts some did. The server's own hot path carries no
counter for this.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass, field

from harness import RawClient, get, proc_fds, proc_threads, wait_until
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

READ_WAIT = 0.05  # seconds one partial read waits for data
END_WAIT = 10.0  # seconds the final read waits for all answers and the close


@dataclass
class Client:
    """One connection and what the model says it must receive."""

    name: str
    sock: socket.socket
    expected: list[tuple[int, bytes | None]] = field(default_factory=list)  # (status, body or None: any)
    got: list[tuple[int, bytes, dict[str, str]]] = field(default_factory=list)
    buffer: bytes = b""
    partial: bytes = b""  # the rest of a request sent only in part
    sent: int = 0
    ended: bool = False  # a malformed or Connection: close request was sent: nothing more may be sent
    half_closed: bool = False
    eof: bool = False

    @property
    def can_send(self) -> bool:
        return not (self.ended or self.half_closed)


def _request(name: str, number: int, kind: str) -> bytes:
    path = f"/{name}/{number}"
    if kind == "get":
        return get(path)
    if kind == "length":
        body = b"x" * (number % 7 + 1) * 300
        return b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    if kind == "chunked":
        return (b"POST %s HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Checksum: x\r\n\r\n" % path.encode())
    return get(path, "Connection: close\r\n")


def _take_responses(client: Client) -> None:
    """Move every complete answer out of the client's buffer (all of ours carry Content-Length)."""
    while True:
        end = client.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = client.buffer[:end].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers["content-length"])
        if len(client.buffer) < end + 4 + length:
            return
        body = client.buffer[end + 4:end + 4 + length]
        client.buffer = client.buffer[end + 4 + length:]
        client.got.append((int(lines[0].split(" ")[1]), body, headers))


def _check(client: Client) -> None:
    """What arrived so far is a prefix of what the model expects, and nothing beyond it."""
    assert len(client.got) <= len(client.expected), (
        f"{client.name}: more answers than requests: {[(s, b[:40]) for s, b, _ in client.got]}")
    for (status, body, headers), (want_status, want_body) in zip(client.got, client.expected, strict=False):
        assert status == want_status and (want_body is None or body == want_body), (
            f"{client.name}: got {status} {body[:80]!r}, expected {want_status} {want_body!r}")
        if want_body is None:
            assert headers.get("connection") == "close"


def make_machine(address: tuple[str, int]) -> type[RuleBasedStateMachine]:
    class Clients(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.clients: list[Client] = []

        @initialize(count=st.integers(3, 8))
        def connect(self, count: int) -> None:
            for index in range(count):
                self.clients.append(Client(f"c{index}", socket.create_connection(address, timeout=5)))

        def _pick(self, data: st.DataObject, wanted) -> Client | None:
            candidates = [c for c in self.clients if wanted(c)]
            return data.draw(st.sampled_from(candidates)) if candidates else None

        def _send(self, client: Client, payload: bytes, cuts: list[int], pause: float) -> None:
            points = sorted({cut % (len(payload) + 1) for cut in cuts})
            start = 0
            for end in [*points, len(payload)]:
                if end > start:
                    client.sock.sendall(payload[start:end])
                    if pause:
                        time.sleep(pause)
                start = end

        @rule(data=st.data(), kinds=st.lists(st.sampled_from(["get", "get", "length", "chunked"]), min_size=1,
                                             max_size=4),
              close_last=st.booleans(), cuts=st.lists(st.integers(0, 5000), max_size=6),
              pause=st.sampled_from([0, 0, 0.001, 0.01]))
        def send_requests(self, data, kinds, close_last, cuts, pause) -> None:
            """Whole requests, pipelined, in random pieces (a half-sent one is finished first)."""
            client = self._pick(data, lambda c: c.can_send)
            if client is None:
                return
            if close_last and data.draw(st.integers(0, 3)) == 0:
                kinds = [*kinds, "close"]
            payload = client.partial
            client.partial = b""
            for kind in kinds:
                client.sent += 1
                payload += _request(client.name, client.sent, kind)
                client.expected.append((200, f"/{client.name}/{client.sent}".encode()))
            if kinds[-1] == "close":
                client.ended = True
            self._send(client, payload, cuts, pause)

        @rule(data=st.data(), kind=st.sampled_from(["get", "length", "chunked"]), at=st.integers(1, 10_000))
        def send_part_of_a_request(self, data, kind, at) -> None:
            client = self._pick(data, lambda c: c.can_send and not c.partial)
            if client is None:
                return
            client.sent += 1
            payload = _request(client.name, client.sent, kind)
            cut = at % (len(payload) - 1) + 1
            client.expected.append((200, f"/{client.name}/{client.sent}".encode()))
            client.sock.sendall(payload[:cut])
            client.partial = payload[cut:]

        @rule(data=st.data(), bad=st.sampled_from([b"NOT A REQUEST\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n",
                                                    b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: 1, 2\r\n\r\n",
                                                    b"GET / HTTP/1.1\r\nHost: t\nX: y\r\n\r\n"]))
        def send_malformed(self, data, bad) -> None:
            """A 400 after the answers before it, and then nothing: the framing is lost."""
            client = self._pick(data, lambda c: c.can_send and not c.partial)
            if client is None:
                return
            client.expected.append((400, None))
            client.ended = True
            client.sock.sendall(bad + get("/never"))

        @rule()
        def burst(self) -> None:
            """One request from every client that can send, back to back: answers for several connections
            become ready in one poll, which is what batched writes are for."""
            for client in self.clients:
                if client.can_send and not client.partial:
                    client.sent += 1
                    client.expected.append((200, f"/{client.name}/{client.sent}".encode()))
                    client.sock.sendall(_request(client.name, client.sent, "get"))

        @rule(data=st.data())
        def read_some(self, data) -> None:
            """Read whatever has arrived, or part of it: the client need not read everything at once."""
            client = self._pick(data, lambda c: not c.eof)
            if client is None:
                return
            client.sock.settimeout(READ_WAIT)
            try:
                chunk = client.sock.recv(data.draw(st.sampled_from([1, 100, 65536])))
            except TimeoutError:
                return
            if not chunk:
                client.eof = True
            client.buffer += chunk
            _take_responses(client)
            _check(client)

        @rule(data=st.data())
        def half_close(self, data) -> None:
            """The client is done sending; a half-sent request is now cut off and gets a 400."""
            client = self._pick(data, lambda c: not c.half_closed)
            if client is None:
                return
            self._half_close(client)

        def _half_close(self, client: Client) -> None:
            if client.partial and not client.ended:
                client.expected[-1] = (400, None)
                client.partial = b""
            client.half_closed = True
            try:
                client.sock.shutdown(socket.SHUT_WR)
            except OSError:
                assert client.ended  # the server may already have closed after its last answer

        @rule(data=st.data())
        def reset(self, data) -> None:
            """Gone without a goodbye: RST instead of FIN. The server must just forget the connection."""
            client = self._pick(data, lambda c: True)
            if client is None or len(self.clients) <= 2:
                return
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sock.close()
            self.clients.remove(client)

        @rule(seconds=st.sampled_from([0.001, 0.01, 0.03]))
        def pause(self, seconds) -> None:
            time.sleep(seconds)

        def teardown(self) -> None:
            try:
                for client in self.clients:
                    if not client.half_closed:
                        self._half_close(client)
                for client in self.clients:
                    client.sock.settimeout(END_WAIT)
                    while not client.eof:
                        try:
                            chunk = client.sock.recv(65536)
                        except ConnectionResetError:
                            chunk = b""
                        client.buffer += chunk
                        client.eof = not chunk
                    _take_responses(client)
                    _check(client)
                    assert len(client.got) == len(client.expected), (
                        f"{client.name}: {len(client.got)} answers for {len(client.expected)} requests, then EOF; "
                        f"got {[(s, b[:30]) for s, b, _ in client.got]}")
                    assert client.buffer == b"", f"{client.name}: bytes after the last answer: {client.buffer!r}"
            finally:
                for client in self.clients:
                    client.sock.close()

    return Clients


def test_clients_get_every_answer_in_order_whatever_they_do(server_factory):
    server = server_factory("--app", "apps:batch_counting", "--no-access-log", "--threads", "4")
    pid = server.proc.pid
    threads, fds = proc_threads(pid), proc_fds(pid)
    run_state_machine_as_test(make_machine(server.address), settings=settings(
        max_examples=50, stateful_step_count=30, deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow]))
    wait_until(lambda: proc_fds(pid) == fds, what=f"descriptors back to {fds}")
    assert proc_threads(pid) == threads
    check = RawClient.connect(server.address)
    status, _, body = check.request(get("/_batches"))
    check.close()
    batches = json.loads(body)
    assert status == 200 and batches["shared"] > 0, f"no batch held answers of two connections: {batches}"

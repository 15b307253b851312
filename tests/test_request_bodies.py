"""Request bodies: bounded memory per connection, chunk parsing linear in the bytes sent (issue 25, finding 4).

The transport still gathers a body between polls, so a slow upload holds no thread; what it gathers
is at most ``--max-body-in-memory`` bytes in memory, the rest in an anonymous temporary file
(server/protocol/body.py), and ``wsgi.input`` reads from there. Chunks that repeat their size line
are read as a run in a few C-level passes, so a body sent in one-byte chunks costs a small multiple
of the same body sent with Content-Length, not a round of Python per chunk.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import tempfile
import time

import pytest
from harness import ReceiveQueue, proc_cpu_seconds, proc_rss, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st

from server.protocol import Limits, ProtocolError, RequestParser

MiB = 1 << 20
CHUNKED_HEAD = b"POST /calc HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


def length_request(body: bytes, target: bytes = b"/calc") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s" % (target, len(body), body)


def chunked(chunks: list[bytes], ext: bytes = b"", target: bytes = b"/calc") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" % target
            + b"".join(b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks) + b"0\r\n\r\n")


def one_byte_chunks(body: bytes, target: bytes = b"/calc") -> bytes:
    return chunked([body[i:i + 1] for i in range(len(body))], target=target)


def feed(data: bytes, piece: int, limits: Limits | None = None, spill=None) -> list:
    """Every request in ``data`` fed in pieces of ``piece`` bytes, with the body read out of its file if spilled."""
    parser = RequestParser(limits or Limits(), spill=spill)
    out = []
    for i in range(0, len(data), piece):
        parser.feed(data[i:i + piece])
        while (request := parser.next_request()) is not None:
            if request.body_file is not None:
                assert request.body == b""
                request.body = request.body_file.read()
                request.body_file.close()
            out.append(request)
    return out


# -- the parser: runs of chunks, spilling -------------------------------------------------------------------

@st.composite
def bodies_in_runs(draw) -> list[bytes]:
    """Chunks in runs of equal sizes (what the run reader takes at once), with data that looks like framing."""
    chunks: list[bytes] = []
    for _ in range(draw(st.integers(0, 6))):
        size = draw(st.integers(1, 70))
        count = draw(st.integers(1, 40))
        alphabet = draw(st.sampled_from([b"\r\n0;", b"ab", bytes(range(256))]))
        chunks += [bytes(draw(st.sampled_from(alphabet)) for _ in range(size)) for _ in range(count)]
    return chunks


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(chunks=bodies_in_runs(), ext=st.sampled_from([b"", b";a=b", b' ; q="x y"']),
       piece=st.integers(1, 600), in_memory=st.sampled_from([0, 50, 1 << 20]))
def test_chunked_bodies_read_the_same_however_they_arrive(chunks, ext, piece, in_memory):
    data = chunked(chunks, ext) + b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"
    limits = Limits(max_body_in_memory=in_memory)
    (first, second) = feed(data, piece, limits, spill=tempfile.TemporaryFile)
    assert first.body == b"".join(chunks) and second.path == "/next"


@pytest.mark.usefixtures("both_parser_caches")
@pytest.mark.parametrize(("tail", "detail"), [
    (b"1\r\nab\r\n", "chunk data must be followed by CRLF"),
    (b"1\r\na\r\r\n", "chunk data must be followed by CRLF"),
    (b"1 \r\na\r\n", "invalid chunk size line"),
    (b"1;\r\na\r\n", "invalid chunk size line"),
    (b"1\r\na\n", "chunk data must be followed by CRLF"),
])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_a_chunk_that_breaks_a_run_is_refused_as_when_read_alone(tail, detail, piece):
    """A run of equal chunks, then one that differs in its framing: the same error at any split."""
    data = CHUNKED_HEAD + b"1\r\na\r\n" * 50 + tail + b"1\r\na\r\n" * 50 + b"0\r\n\r\n"
    with pytest.raises(ProtocolError) as error:
        feed(data, piece)
    assert error.value.status == 400 and detail in error.value.detail


@pytest.mark.usefixtures("both_parser_caches")
def test_a_run_of_chunks_past_the_body_limit_is_413():
    data = one_byte_chunks(b"x" * 101)
    with pytest.raises(ProtocolError) as error:
        feed(data, 4096, Limits(max_body_size=100))
    assert error.value.status == 413
    assert feed(one_byte_chunks(b"x" * 100), 4096, Limits(max_body_size=100))[0].body == b"x" * 100


@pytest.mark.usefixtures("both_parser_caches")
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_past_the_memory_bound_goes_to_a_file_and_one_within_stays(framing):
    make = length_request if framing == "length" else (lambda body: chunked([body[:60], body[60:]]))
    limits = Limits(max_body_in_memory=100)
    for size, spilled in ((100, False), (101, True)):
        body = os.urandom(size)
        for piece in (1, 33, 100000):
            parser = RequestParser(limits, spill=tempfile.TemporaryFile)
            data = make(body)
            request = None
            for i in range(0, len(data), piece):
                parser.feed(data[i:i + piece])
                request = parser.next_request() or request
            assert request is not None
            assert (request.body_file is not None) is spilled
            assert (request.body_file.read() if spilled else request.body) == body


@pytest.mark.usefixtures("both_parser_caches")
def test_without_a_spill_factory_bodies_stay_in_memory():
    body = os.urandom(300)
    (request,) = feed(length_request(body), 7, Limits(max_body_in_memory=10))
    assert request.body == body


@pytest.mark.usefixtures("both_parser_caches")
def test_closing_the_parser_closes_a_half_received_body_file():
    opened = []

    def spill():
        opened.append(tempfile.TemporaryFile())  # noqa: SIM115 - the parser owns and closes it
        return opened[-1]

    parser = RequestParser(Limits(max_body_in_memory=10), spill=spill)
    parser.feed(length_request(b"x" * 100)[:-5])
    assert parser.next_request() is None
    assert len(opened) == 1 and not opened[0].closed
    parser.close()
    assert opened[0].closed


def parse_cpu(data: bytes) -> float:
    """Thread CPU seconds to parse ``data`` fed in 64 KiB pieces (what one recv gives the transport).

    In memory (no spill file): the file's writes would add the kernel's time, which this does not measure.
    """
    parser = RequestParser(Limits(max_body_size=8 * MiB))
    pieces = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    request = None
    started = time.thread_time()
    for piece in pieces:
        parser.feed(piece)
        request = parser.next_request() or request
    spent = time.thread_time() - started
    assert request is not None and len(request.body) in (MiB, 2 * MiB, 4 * MiB)
    return spent


@pytest.mark.usefixtures("both_parser_caches")
def test_one_byte_chunks_cost_the_parser_a_bounded_multiple_of_content_length():
    body = os.urandom(2 * MiB)
    by_length = statistics.median(parse_cpu(length_request(body)) for _ in range(7))
    by_chunks = statistics.median(parse_cpu(one_byte_chunks(body)) for _ in range(7))
    doubled = statistics.median(parse_cpu(one_byte_chunks(body * 2)) for _ in range(7))
    print(f"parser, 2 MiB body: Content-Length {by_length * 1000:.1f} ms, one-byte chunks {by_chunks * 1000:.1f} ms "
          f"({by_chunks / by_length:.1f}x); 4 MiB in one-byte chunks {doubled * 1000:.1f} ms "
          f"({doubled / by_chunks:.2f}x of 2 MiB)")
    assert by_chunks < 40 * by_length
    assert doubled < 2.6 * by_chunks


# -- the server ----------------------------------------------------------------------------------------------

def upload_cpu(server, data: bytes, expected_length: int) -> float:
    """Server CPU seconds for one upload to apps:body_probe, answer included."""
    client = server.connect(timeout=60)
    try:
        before = proc_cpu_seconds(server.proc.pid)
        status, _, answer = client.request(data, timeout=60)
        spent = proc_cpu_seconds(server.proc.pid) - before
    finally:
        client.close()
    assert status == 200 and json.loads(answer)["length"] == expected_length
    return spent


def test_one_byte_chunks_cost_the_server_a_bounded_multiple_of_content_length(server_factory):
    server = server_factory("--app", "apps:body_probe", "--no-access-log", "--max-body-size", str(16 * MiB))
    body = os.urandom(4 * MiB)  # 24 MB on the wire in one-byte chunks: many ticks of the 10 ms CPU clock
    target = b"/?read_n"
    upload_cpu(server, length_request(body, target), 4 * MiB)  # warm up
    # This machine's other work adds noise, so the three kinds of upload are interleaved round by round
    # and compared by their medians.
    by_length, by_chunks, doubled = [], [], []
    for _ in range(5):
        by_length.append(upload_cpu(server, length_request(body, target), 4 * MiB))
        by_chunks.append(upload_cpu(server, one_byte_chunks(body, target), 4 * MiB))
        doubled.append(upload_cpu(server, one_byte_chunks(body * 2, target), 8 * MiB))
    length_cpu, chunks_cpu, doubled_cpu = (max(statistics.median(x), 0.01) for x in (by_length, by_chunks, doubled))
    print(f"server, median of 5 uploads: 4 MiB with Content-Length {length_cpu:.3f} s, in one-byte chunks "
          f"{chunks_cpu:.3f} s ({chunks_cpu / length_cpu:.1f}x); 8 MiB in one-byte chunks {doubled_cpu:.3f} s "
          f"({doubled_cpu / chunks_cpu:.2f}x)")
    assert chunks_cpu < 40 * length_cpu
    # Linear is 2x; a cost that grew with the square of the body would be 4x.
    assert doubled_cpu < 3 * chunks_cpu


def test_many_trickling_uploads_hold_bounded_memory(server_factory):
    """200 connections each with 1 MiB of body sent but the last byte: the server's RSS grows by a bounded amount.

    Before, every body was held whole in memory: 200 MiB for these 200 connections.
    """
    server = server_factory("--app", "apps:body_probe", "--no-access-log")
    pid = server.proc.pid
    body = os.urandom(MiB)
    request = length_request(body, b"/?read")
    clients = []
    try:
        warm = server.connect()
        assert warm.request(length_request(body, b"/?read"), timeout=30)[0] == 200
        warm.close()
        baseline = proc_rss(pid)
        for _ in range(200):
            client = server.connect(timeout=30)
            clients.append(client)
            client.send(request[:-1])
        for client in clients:  # the server has read every byte sent so far
            queue = ReceiveQueue(client.sock.getpeername(), client.sock.getsockname())
            try:
                wait_until(lambda queue=queue: queue.unread() == 0, timeout=60, what="the server read the bodies")
            finally:
                queue.close()
        grown = proc_rss(pid) - baseline
        print(f"RSS with 200 bodies of 1 MiB one byte short of complete: +{grown / MiB:.1f} MiB")
        assert grown < 48 * MiB
        for client in clients:
            client.send(request[-1:])
        for client in clients:
            status, _, answer = client.read_response(timeout=60)
            assert status == 200 and json.loads(answer)["sha256"] == hashlib.sha256(body).hexdigest()
    finally:
        for client in clients:
            client.close()
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    wait_until(lambda: len(os.listdir(f"/proc/{pid}/fd")) < 50, timeout=10, what=f"spill files closed ({fds} fds)")


WAYS = ["read", "read_n", "readline", "readline_n", "readlines", "readlines_hint", "iter"]


@pytest.fixture(scope="module")
def probe_server():
    from harness import start_server

    server = start_server("--app", "apps:body_probe", "--no-access-log", "--max-body-in-memory", "4096")
    yield server
    server.stop()


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("size", [0, 1000, 200_000], ids=["empty", "in-memory", "spilled"])
@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_wsgi_input_reads_every_pep_3333_way(probe_server, way, size, framing):
    lines = b"".join(b"line %d of the body\n" % i for i in range(size // 20 + 1))[:size]
    data = (length_request(lines, b"/?" + way.encode()) if framing == "length"
            else chunked([lines[i:i + 999] for i in range(0, len(lines), 999)], target=b"/?" + way.encode()))
    client = probe_server.connect()
    try:
        status, _, answer = client.request(data, timeout=30)
    finally:
        client.close()
    info = json.loads(answer)
    assert status == 200
    assert info["length"] == size and info["sha256"] == hashlib.sha256(lines).hexdigest()
    assert info["content_length"] == str(size)
    assert info["after"] == [0, 0, 0]  # reading past CONTENT_LENGTH gives b""
    if way in ("readline", "readlines", "iter") and size:
        assert info["pieces"] == lines.count(b"\n") + (not lines.endswith(b"\n"))


def test_a_socket_slow_body_holds_no_thread(server_factory):
    """With one worker thread, a body that stalls midway does not stop another client being served."""
    server = server_factory("--app", "apps:body_probe", "--no-access-log", "--threads", "1")
    slow = server.connect()
    other = server.connect()
    try:
        slow.send(length_request(b"x" * 200_000, b"/?read")[:100_000])
        status, _, answer = other.request(length_request(b"y" * 10, b"/?read"), timeout=5)
        assert status == 200 and json.loads(answer)["length"] == 10
        slow.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        slow.send(length_request(b"x" * 200_000, b"/?read")[100_000:])
        assert json.loads(slow.read_response(timeout=10)[2])["length"] == 200_000
    finally:
        slow.close()
        other.close()

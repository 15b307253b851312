"""Fuzzing: the protocol core with hypothesis (no sockets), then the real server over sockets.

tests/test_protocol_parser.py already checks a few fixed valid requests under byte
splits, arbitrary bytes fed in one piece and single-byte mutations. This file adds:

* a generator of *any* valid request (methods, targets, headers with optional
  whitespace and obs-text, Content-Length and chunked bodies with extensions and
  trailers, HTTP/1.0 and 1.1, pipelined sequences) checked against a model of
  what the parser must return, under arbitrary byte splits;
* arbitrary and multiply-mutated bytes fed in arbitrary splits: only
  ProtocolError, and the same outcome (requests, then error status) whatever the
  split, since the parser promises that the same bytes give the same result;
* a smuggling grammar: heads built from Content-Length / Transfer-Encoding spelling
  variants, compared with an independent strict oracle of RFC 9112 6.3 framing;
* a bounded socket fuzz run against the real server, after which it must still be
  healthy and have leaked no threads and no file descriptors.
"""

from __future__ import annotations

import random
import socket
import string
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from harness import RawClient, proc_fds, proc_threads, wait_until
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.protocol import Limits, ProtocolError, RequestParser

TCHAR = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
SPECIAL_FIELDS = {"host", "content-length", "transfer-encoding", "connection", "expect"}
KNOWN_STATUSES = {400, 408, 413, 414, 417, 431, 501, 505}


# -- running the parser ----------------------------------------------------------------------------------------

def _describe(request) -> tuple:
    return (request.method, request.target, request.path, request.query, request.version,
            tuple(request.headers), request.host, request.body, request.keep_alive, request.chunked)


def _outcome(pieces: list[bytes], limits: Limits | None = None) -> tuple[list[tuple], int | None]:
    """Feed the pieces in order; the requests parsed and the status of the first error, if any."""
    parser = RequestParser(limits)
    got: list[tuple] = []
    try:
        for piece in pieces:
            parser.feed(piece)
            while (request := parser.next_request()) is not None:
                got.append(_describe(request))
        parser.feed_eof()
    except ProtocolError as error:
        assert error.status in KNOWN_STATUSES, error
        assert error.detail and isinstance(error.detail, str)
        return got, error.status
    return got, None


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for end in [*points, len(data)]:
        pieces.append(data[start:end])
        start = end
    return pieces


# -- a generator of valid requests, with the Request the parser must produce ------------------------------------

token = st.text(alphabet=TCHAR, min_size=1, max_size=12)
field_name = token.filter(lambda name: name.lower() not in SPECIAL_FIELDS)
VCHAR = [bytes([b]) for b in [*range(0x21, 0x7F), *range(0x80, 0x100)]]
field_core = st.lists(st.sampled_from([*VCHAR, b" ", b"\t"]), max_size=30).map(
    lambda chars: b"".join(chars).strip(b" \t"))  # a field value as the parser returns it: no outer whitespace
ows = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t"])
PCHAR = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"
segment = st.text(alphabet=PCHAR, max_size=10)
query_text = st.text(alphabet=PCHAR + "/?", max_size=20)


@st.composite
def target(draw) -> tuple[str, str, str]:
    path = "/" + "/".join(draw(st.lists(segment, max_size=4)))
    query = draw(st.none() | query_text)
    text = path if query is None else f"{path}?{query}"
    return text, path, query or ""


@st.composite
def chunk_extension(draw) -> bytes:
    name = draw(token).encode()
    value = draw(st.none() | token.map(str.encode)
                 | st.text(alphabet=string.ascii_letters + " ;=,", max_size=8).map(lambda t: b'"' + t.encode() + b'"'))
    space = draw(st.sampled_from([b"", b" "]))
    return space + b";" + space + name + (b"" if value is None else b"=" + value)


@st.composite
def valid_request(draw) -> tuple[bytes, tuple]:
    """Raw bytes of one valid request and the ``_describe`` tuple the parser must give for it."""
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])
                  | token.filter(lambda m: m != "CONNECT"))
    text, path, query = draw(target())
    http11 = draw(st.booleans())
    version = "HTTP/1.1" if http11 else "HTTP/1.0"
    fields: list[tuple[bytes, bytes]] = []
    for name in draw(st.lists(field_name, max_size=5)):
        fields.append((name.encode(), draw(field_core)))
    host = None
    if http11 or draw(st.booleans()):
        host = draw(st.text(alphabet=string.ascii_lowercase + string.digits + ".-", max_size=15)
                    .map(lambda h: h + draw(st.sampled_from(["", ":8080"]))))
        fields.insert(draw(st.integers(0, len(fields))), (draw(st.sampled_from([b"Host", b"host", b"HOST"])),
                                                          host.encode()))
    connection = draw(st.sampled_from([None, b"close", b"keep-alive", b"Keep-Alive, Upgrade", b"close, x"]))
    if connection is not None:
        fields.append((b"Connection", connection))
    body = draw(st.binary(max_size=60))
    framing = draw(st.sampled_from(["none", "length", "chunked"] if http11 else ["none", "length"]))
    chunked = framing == "chunked"
    raw_body = b""
    if framing == "none":
        body = b""
    elif framing == "length":
        digits = b"%d" % len(body)
        fields.append((b"Content-Length", draw(st.sampled_from([b"", b"0", b"00"])) + digits))
        raw_body = body
    else:
        fields.append((b"Transfer-Encoding", draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))))
        cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
        start = 0
        for end in [*cuts, len(body)]:
            if end > start:
                size = b"%x" % (end - start)
                size = draw(st.sampled_from([size, size.upper(), b"0" + size]))
                raw_body += size + b"".join(draw(st.lists(chunk_extension(), max_size=2))) + b"\r\n"
                raw_body += body[start:end] + b"\r\n"
                start = end
        raw_body += b"0" + b"".join(draw(st.lists(chunk_extension(), max_size=1))) + b"\r\n"
        for name in draw(st.lists(field_name, max_size=2)):
            raw_body += name.encode() + b":" + draw(ows) + draw(field_core) + b"\r\n"
        raw_body += b"\r\n"
    head = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n"]))
    head += f"{method} {text} {version}\r\n".encode()
    for name, value in fields:
        head += name + b":" + draw(ows) + value + draw(ows) + b"\r\n"
    data = head + b"\r\n" + raw_body

    headers = tuple((name.decode().lower(), value.decode("latin-1")) for name, value in fields)
    tokens = [t.strip() for t in (connection or b"").decode().lower().split(",")]
    keep_alive = "close" not in tokens if http11 else ("keep-alive" in tokens and "close" not in tokens)
    expected = (method, text, path, query, version, headers, host, body, keep_alive, chunked)
    return data, expected


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(valid_request(), min_size=1, max_size=4),
       cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=16))
def test_generated_valid_requests_parse_to_their_model_under_any_split(requests, cuts):
    data = b"".join(raw for raw, _ in requests)
    expected = [model for _, model in requests]
    assert _outcome([data]) == (expected, None)
    assert _outcome(_split(data, cuts)) == (expected, None)


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=60, deadline=None)
@given(request=valid_request())
def test_generated_valid_request_byte_by_byte(request):
    data, model = request
    assert _outcome([data[i:i + 1] for i in range(len(data))]) == ([model], None)


# -- hostile bytes: only ProtocolError, and the same outcome however they are split -----------------------------

SMALL = Limits(max_request_line=120, max_header_count=6, max_header_size=80, max_headers_total=300,
               max_body_size=64, max_chunk_ext=24)
TOKENS = [b"\r\n", b"\r\n\r\n", b"\n", b"\r", b"\x00", b" ", b"\t", b":", b";", b",", b"0\r\n\r\n", b"\xff",
          b"Transfer-Encoding: chunked\r\n", b"Content-Length: 5\r\n", b"Content-Length: 0\r\n", b"Host: h\r\n",
          b"GET / HTTP/1.1\r\n", b"HTTP/1.0", b"HTTP/2.0", b"Expect: 100-continue\r\n", b"ffffffffffffffff",
          b"-1", b"+1", b"0x1", b"\r\n ", b"A" * 150]
BASES = [
    b"GET /add/2/3?x=1 HTTP/1.1\r\nHost: h\r\nAccept: */*\r\n\r\n",
    b"POST /calc HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n{\"op\":\"a\"}",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;e=v\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\nGET http://h/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "insert", "delete", "duplicate", "token"]))
        if kind == "replace" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            data[at:at] = data[at:at + draw(st.integers(1, 30))]
        else:
            data[at:at] = draw(st.sampled_from(TOKENS))
    return bytes(data)


def _same_decision(got: tuple[list[tuple], int | None], expected: tuple[list[tuple], int | None]) -> bool:
    """The same requests, then the same decision (accept or reject), whatever the split.

    The status of a rejection may differ: when a head is both too long and holds a bare CR, the
    parser reports whichever it sees first in the bytes it has (414 when it has the whole line,
    400 when the CR arrived in an earlier piece). Either way nothing more is read from the stream.
    """
    return got[0] == expected[0] and (got[1] is None) == (expected[1] is None)


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=600, deadline=None)
@given(data=st.binary(max_size=400) | mutated(), cuts=st.lists(st.integers(0, 1000), min_size=1, max_size=10),
       limits=st.sampled_from([None, SMALL]))
@example(data=b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" + b"x" * 130, cuts=[1], limits=SMALL)
def test_hostile_bytes_give_the_same_outcome_however_they_are_split(data, cuts, limits):
    whole = _outcome([data], limits)
    assert _same_decision(_outcome(_split(data, cuts), limits), whole)


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=150, deadline=None)
@given(data=mutated())
def test_hostile_bytes_byte_by_byte(data):
    assert _same_decision(_outcome([data[i:i + 1] for i in range(len(data))], SMALL), _outcome([data], SMALL))


# -- request smuggling: framing headers against an independent oracle of RFC 9112 6.3 -------------------------

CL_VALUES = [b"5", b"05", b"0", b"+5", b"-5", b"5 ", b" 5", b"5,5", b"5, 5", b"5,6", b"0x5", b"5_0", b"5.0",
             b"", b"99999999999999999999", b"\xd9\xa5"]
TE_VALUES = [b"chunked", b"Chunked", b"chunked ", b"gzip, chunked", b"chunked, gzip", b"identity", b"gzip",
             b"chunked, chunked", b"xchunked", b"chunked;q=1", b",chunked", b"chunked,", b"", b"\x0bchunked"]
NAME_SPELLINGS = [b"{}", b"{} ", b" {}", b"{}\t", b"X-{}"]


@st.composite
def framing_head(draw) -> tuple[bytes, list[tuple[bytes, bytes, bytes]], bool]:
    http11 = draw(st.booleans())
    fields = []
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from([b"Content-Length", b"Transfer-Encoding"]))
        spelled = draw(st.sampled_from(NAME_SPELLINGS)).replace(b"{}", draw(st.sampled_from(
            [kind, kind.lower(), kind.upper()])))
        value = draw(st.sampled_from(CL_VALUES if kind == b"Content-Length" else TE_VALUES))
        fields.append((kind, spelled, value))
    head = b"POST /s HTTP/1.1\r\nHost: h\r\n" if http11 else b"POST /s HTTP/1.0\r\n"
    for _, spelled, value in fields:
        head += spelled + b": " + value + b"\r\n"
    return head + b"\r\n", fields, http11


def _oracle(fields: list[tuple[bytes, bytes, bytes]], http11: bool) -> str | int:
    """'reject', 'chunked', or the Content-Length: written from RFC 9112 6.1 and 6.3, not from the parser."""
    lengths, codings = [], []
    for kind, spelled, value in fields:
        if spelled != spelled.strip(b" \t"):
            return "reject"  # whitespace around the field name (RFC 9112 5.1)
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in value):
            return "reject"  # control characters in a field value (RFC 9110 5.5)
        if spelled.lower() != kind.lower():
            continue  # an unrelated X- field
        if kind == b"Content-Length":
            lengths.append(value.strip(b" \t"))
        else:
            codings += [c.strip(b" \t").lower() for c in value.split(b",")]
    if codings:
        codings = [c for c in codings if c]
        if lengths or not http11 or codings != [b"chunked"]:
            return "reject"  # CL with TE, TE in 1.0, a final coding other than chunked, codings we lack
        return "chunked"
    if len(lengths) > 1:
        return "reject"
    if lengths:
        value = lengths[0]
        if not value or any(c not in b"0123456789" for c in value) or int(value) > 1 << 20:
            return "reject"
        return int(value)
    return 0


@pytest.mark.usefixtures("both_parser_caches")
@settings(max_examples=800, deadline=None)
@given(head=framing_head(), junk=st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n"]))
def test_framing_headers_agree_with_a_strict_oracle(head, junk):
    """Accepted heads are framed exactly as the oracle says (the next request follows in sync); others rejected."""
    data, fields, http11 = head
    expected = _oracle(fields, http11)
    if expected == "chunked":
        body = b"5\r\nhello\r\n0\r\n\r\n"
    elif expected == "reject":
        body = junk
    else:
        body = b"b" * expected
    parser = RequestParser()
    parser.feed(data + body + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    try:
        first = parser.next_request()
    except ProtocolError as error:
        assert expected == "reject", f"rejected ({error.status} {error.detail}) but RFC framing is {expected!r}"
        assert error.status in (400, 413, 501)
        return
    assert expected != "reject", f"accepted {data!r}, whose body framing the oracle rejects"
    assert first is not None and first.chunked == (expected == "chunked")
    assert first.body == (b"hello" if expected == "chunked" else body)
    second = parser.next_request()
    assert second is not None and second.target == "/next"


# -- the real server over sockets ------------------------------------------------------------------------------

CORPUS = [
    b"GET /add/2/3 HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    b"GET /div/1/3 HTTP/1.0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n",
    b"POST /calc HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nContent-Length: 30\r\n\r\n"
    b'{"op":"add","arg1":1,"arg2":2}',
    b"POST /calc HTTP/1.1\r\nHost: fuzz\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b'10;x=y\r\n{"op":"mult","arg\r\nE\r\n1":2,"arg2":3}\r\n0\r\nX-T: 1\r\n\r\n',
    b"OPTIONS * HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    b"GET http://fuzz/sub/5/7?q=1 HTTP/1.1\r\nHost: fuzz\r\nAccept: */*\r\nUser-Agent: f\r\n\r\n"
    b"GET /mult/6/7 HTTP/1.1\r\nHost: fuzz\r\n\r\n",
    b"POST /calc HTTP/1.1\r\nHost: fuzz\r\nExpect: 100-continue\r\nContent-Type: application/json\r\n"
    b'Content-Length: 31\r\n\r\n{"op":"div","arg1":1,"arg2":0} ',
]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(buf))
        kind = rng.random()
        if kind < 0.3 and at < len(buf):
            buf[at] = rng.randrange(256)
        elif kind < 0.5:
            buf[at:at] = rng.choice(TOKENS)
        elif kind < 0.65:
            del buf[at:at + rng.randint(1, 10)]
        elif kind < 0.8:
            buf[at:at] = buf[at:at + rng.randint(1, 40)]
        elif kind < 0.9:
            buf[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        else:
            buf[at:at] = rng.choice([b"A", b"9", b"\r\n", b" "]) * rng.randint(100, 20_000)
    return bytes(buf)


def _fuzz_case(rng: random.Random) -> tuple[bytes, bool]:
    """Bytes to send, and whether to half-close after them (else the server's timeouts must end it)."""
    roll = rng.random()
    if roll < 0.1:
        data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 600)))
    elif roll < 0.2:
        data = b"".join(rng.choice(CORPUS) for _ in range(rng.randint(2, 5)))
    else:
        data = _mutate(rng, rng.choice(CORPUS))
    return data, rng.random() < 0.9


def _run_case(address, data: bytes, half_close: bool) -> tuple[list[int], str]:
    """Send one fuzz case; the statuses of the complete responses and how the connection ended."""
    client = RawClient.connect(address, timeout=10)
    statuses: list[int] = []
    try:
        try:
            client.send(data)
            if half_close:
                client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may refuse early (e.g. 414) and stop reading; its answer is still readable
        while True:
            try:
                status, _, _ = client.read_response(timeout=10)
            except ConnectionResetError:
                return statuses, "reset"
            except ConnectionError:
                return statuses, "truncated" if client.buffer else "eof"
            except TimeoutError:
                return statuses, "timeout"
            statuses.append(status)
            if status == 100:
                continue
    finally:
        client.close()


@pytest.mark.slow
def test_socket_fuzz_leaves_the_server_healthy_without_leaks(server_factory):
    server = server_factory("--no-access-log", "--threads", "4", "--header-timeout", "1", "--body-timeout", "1",
                            "--keepalive-timeout", "1")
    pid = server.proc.pid
    fds_before, threads_before = proc_fds(pid), proc_threads(pid)

    count = 2000
    rng = random.Random(20261121)
    cases = [_fuzz_case(rng) for _ in range(count)]
    statuses: Counter[int] = Counter()
    endings: Counter[str] = Counter()
    lock = threading.Lock()

    def run(case: tuple[bytes, bool]) -> None:
        got, ending = _run_case(server.address, *case)
        with lock:
            statuses.update(got)
            endings[ending] += 1

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(run, cases, timeout=240))
    print(f"socket fuzz: {count} cases, statuses {dict(sorted(statuses.items()))}, endings {dict(endings)}")

    assert sum(endings.values()) == count
    assert endings["timeout"] == 0, "a connection was neither answered nor closed by the server's timeouts"
    assert endings["truncated"] == 0, "a response was cut off"
    assert not {500, 502, 504} & set(statuses), statuses
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if 400 <= s < 500) > 0
    health = server.connect()
    assert health.request(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\n\r\n", timeout=2)[0] == 200
    health.close()
    fds_after = wait_until(lambda: (n := proc_fds(pid)) <= fds_before and n, timeout=15,
                           what=f"descriptors back to {fds_before}")
    print(f"socket fuzz: fds {fds_before} -> {fds_after}, threads {threads_before} -> {proc_threads(pid)}")
    assert proc_threads(pid) == threads_before
    assert server.proc.poll() is None
    assert "Traceback" not in server.output()

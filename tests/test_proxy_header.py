"""The PROXY protocol header parser, with bytes only: v1 and v2, partial input, garbage, round trips."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.protocol.proxy_header import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    encode_v1,
    encode_v2,
    parse,
)

# Headers written out by hand from HAProxy's specification (proxy-protocol.txt), not by our encoders.
V1_TCP4 = b"PROXY TCP4 192.0.2.10 198.51.100.7 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 8443\r\n"
V2_TCP4 = (b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"  # signature
           b"\x21"  # version 2, command PROXY
           b"\x11"  # AF_INET, STREAM
           b"\x00\x0c"  # 12 bytes of addresses
           b"\xc0\x00\x02\x0a" b"\xc6\x33\x64\x07" b"\xdc\x04" b"\x01\xbb")


def test_v1_tcp4_and_tcp6():
    assert parse(V1_TCP4 + b"GET / HTTP/1.1\r\n") == ProxyHeader(1, len(V1_TCP4), ("192.0.2.10", 56324),
                                                                   ("198.51.100.7", 443))
    header = parse(V1_TCP6)
    assert header is not None and header.source == ("2001:db8::1", 4000) and header.length == len(V1_TCP6)


def test_v1_unknown_keeps_the_real_peer():
    assert parse(b"PROXY UNKNOWN\r\nrest") == ProxyHeader(1, 15, None, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").source is None


def test_v2_tcp4_written_by_hand():
    header = parse(V2_TCP4 + b"\x16\x03\x01")
    assert header == ProxyHeader(2, 28, ("192.0.2.10", 56324), ("198.51.100.7", 443))


def test_v2_local_and_tlvs():
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local) == ProxyHeader(2, 16, None, None)
    tlv = b"\x02\x00\x0bexample.com"  # PP2_TYPE_AUTHORITY, skipped
    with_tlv = V2_TCP4[:14] + struct.pack("!H", 12 + len(tlv)) + V2_TCP4[16:] + tlv
    header = parse(with_tlv + b"after")
    assert header is not None and header.length == len(with_tlv) and header.source == ("192.0.2.10", 56324)


@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\n\r\n",
    b"POST / HTTP/1.1\r\n",
    b"\x16\x03\x01\x02\x00",  # a TLS ClientHello
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",  # LF only
    b"PROXY TCP5 192.0.2.1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
    b"PROXY TCP4 2001:db8::1 192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
    b"PROXY TCP4 192.0.2.1  192.0.2.2 1 2\r\n",
    b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
    b"PROXY " + b"x" * 200,  # no CRLF within 107 bytes
    V2_SIGNATURE + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + b"\x00" * 12,  # command 2
    V2_SIGNATURE + b"\x21\x11\x00\x04" + b"\x00" * 4,  # address block too short for AF_INET
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + b"\x00" * 12,  # family 4
])
def test_malformed_headers_are_a_typed_error(data):
    with pytest.raises(ProxyHeaderError):
        parse(data)


@pytest.mark.parametrize("header", [V1_TCP4, V1_TCP6, V2_TCP4])
def test_every_proper_prefix_asks_for_more(header):
    for end in range(len(header)):
        assert parse(header[:end]) is None, header[:end]


addresses4 = st.builds(lambda n: str(ipaddress.IPv4Address(n)), st.integers(0, 2**32 - 1))
addresses6 = st.builds(lambda n: str(ipaddress.IPv6Address(n)), st.integers(0, 2**128 - 1))
ports = st.integers(0, 65535)
endpoints = st.one_of(
    st.tuples(st.tuples(addresses4, ports), st.tuples(addresses4, ports)),
    st.tuples(st.tuples(addresses6, ports), st.tuples(addresses6, ports)),
)


@given(endpoints, st.binary(max_size=64), st.sampled_from([1, 2]))
def test_round_trip(pair, tail, version):
    source, destination = pair
    data = encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
    header = parse(data + tail)
    assert header == ProxyHeader(version, len(data), source, destination)


@given(endpoints, st.sampled_from([1, 2]), st.data())
def test_truncated_headers_never_raise_anything_but_ask_for_more(pair, version, data):
    encoded = encode_v1(*pair) if version == 1 else encode_v2(*pair, tlvs=b"\x04\x00\x02ok")
    cut = data.draw(st.integers(0, len(encoded) - 1))
    assert parse(encoded[:cut]) is None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_header_none_or_the_typed_error(data):
    try:
        result = parse(data)
    except ProxyHeaderError:
        return
    assert result is None or (isinstance(result, ProxyHeader) and 0 < result.length <= len(data))


@given(st.binary(min_size=4, max_size=300))
def test_garbage_after_a_v2_signature(data):
    try:
        result = parse(V2_SIGNATURE + data)
    except ProxyHeaderError:
        return
    assert result is None or result.length <= len(V2_SIGNATURE) + len(data)

"""The PROXY protocol header (HAProxy's specification, versions 1 and 2), sans-I/O.

A TCP load balancer that does not speak HTTP (haproxy in ``mode tcp``, AWS NLB,
...) can still tell the server who its client was: it writes one header in front
of the client's bytes. Version 1 is a text line
(``PROXY TCP4 192.0.2.1 192.0.2.2 5000 443\\r\\n``, at most 107 bytes), version 2
a binary block starting with a fixed 12-byte signature.

``parse`` takes the first bytes of a connection and answers one of three ways:
``None`` (not enough bytes yet to decide), a ``ProxyHeader`` (with how many bytes
it took, so the caller knows where the client's own bytes start), or a
``ProxyHeaderError``. It raises nothing else for any input, which the tests
check with arbitrary and truncated bytes. The encoders exist for the tests and
for anyone who needs to put a header in front of a connection.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line the specification allows, CRLF included
V2_MAX_BODY = 65535  # the 16-bit length field
_V2_FIXED = 16
_INET, _INET6, _UNIX = 0x1, 0x2, 0x3
_ADDRESS_SIZE = {_INET: 12, _INET6: 36, _UNIX: 216}

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY header: the connection cannot be trusted to say who its client is."""


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said. ``source`` is None when it carries no address to use (v1 UNKNOWN, v2 LOCAL or an
    address family other than IPv4/IPv6): the receiver then keeps the connection's real peer address."""

    version: int
    length: int  # bytes the header took at the start of the stream
    source: Address | None
    destination: Address | None


def parse(data: bytes) -> ProxyHeader | None:
    """The header at the start of ``data``; None while more bytes are needed; ProxyHeaderError when invalid."""
    if not data:
        return None
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ProxyHeaderError("the connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> ProxyHeader | None:
    size = min(len(data), len(V1_PREFIX))
    if data[:size] != V1_PREFIX[:size]:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX or b"\n" in data[:V1_MAX]:
            raise ProxyHeaderError(f"PROXY v1 line not ended by CRLF within {V1_MAX} bytes")
        return None
    try:
        line = data[len(V1_PREFIX):end].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = line.split(" ")
    length = end + 2
    if parts[0] == "UNKNOWN":  # the proxy could not tell; whatever follows on the line is to be ignored
        return ProxyHeader(1, length, None, None)
    if len(parts) != 5 or parts[0] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 line must be 'TCP4|TCP6 SRC DST SPORT DPORT', got {line[:60]!r}")
    kind = ipaddress.IPv4Address if parts[0] == "TCP4" else ipaddress.IPv6Address
    try:
        source, destination = str(kind(parts[1])), str(kind(parts[2]))
    except ValueError:
        raise ProxyHeaderError(f"PROXY v1 addresses are not {parts[0]} addresses: {line[:60]!r}") from None
    return ProxyHeader(1, length, (source, _v1_port(parts[3])), (destination, _v1_port(parts[4])))


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5) or (len(text) > 1 and text[0] == "0"):
        raise ProxyHeaderError(f"PROXY v1 port must be a decimal number 0-65535, got {text[:10]!r}")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError(f"PROXY v1 port out of range: {port}")
    return port


def _parse_v2(data: bytes) -> ProxyHeader | None:
    size = min(len(data), len(V2_SIGNATURE))
    if data[:size] != V2_SIGNATURE[:size]:
        raise ProxyHeaderError("the connection does not start with a PROXY protocol header")
    if len(data) < _V2_FIXED:
        return None
    version_command, family_transport, body_length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyHeaderError(f"PROXY v2 header has version {version_command >> 4}, expected 2")
    command = version_command & 0x0F
    if command > 1:
        raise ProxyHeaderError(f"PROXY v2 header has unknown command {command}")
    length = _V2_FIXED + body_length
    if len(data) < length:
        return None
    if command == 0:  # LOCAL: the proxy's own connection (a health check); use the real peer
        return ProxyHeader(2, length, None, None)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family > _UNIX or transport > 2:
        raise ProxyHeaderError(f"PROXY v2 header has unknown address family/transport 0x{family_transport:02x}")
    needed = _ADDRESS_SIZE.get(family, 0)
    if body_length < needed:
        raise ProxyHeaderError(f"PROXY v2 address block is {body_length} bytes, family needs {needed}")
    if family == _INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", data, _V2_FIXED)
        kind: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address] = ipaddress.IPv4Address
    elif family == _INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", data, _V2_FIXED)
        kind = ipaddress.IPv6Address
    else:  # UNSPEC or a Unix socket: nothing we can use as REMOTE_ADDR; TLVs after the addresses are skipped
        return ProxyHeader(2, length, None, None)
    return ProxyHeader(2, length, (str(kind(src)), sport), (str(kind(dst)), dport))


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """A v1 line; UNKNOWN when no addresses are given."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {family} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode("ascii")


def encode_v2(source: Address | None, destination: Address | None, tlvs: bytes = b"") -> bytes:
    """A v2 block (command PROXY over TCP, or LOCAL when no addresses are given), optionally with raw TLVs."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = _INET if src.version == 4 else _INET6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, (family << 4) | 0x1, len(body)) + body

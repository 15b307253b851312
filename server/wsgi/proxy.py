"""Which peers may tell us the real client address (X-Forwarded-For) and scheme (X-Forwarded-Proto).

One ``TrustedProxies`` per serving process, built from ``--forwarded-allow-ips``
and shared by the environ builder and the PROXY-protocol check; it holds no
state that changes after construction except its lookup memo (see ``trusts``).

What a trusted proxy may say, and what is ignored. The client address is read
from X-Forwarded-For from the right, as nginx's realip module does with
``real_ip_recursive on``: hops that are our own proxies are skipped, and the
first one that is not is the client. Hops are separated by commas or spaces
(as nginx splits them). Every hop must be an IP address (an IPv4
address may carry a ``:port``, an IPv6 one in brackets); the walk stops at the
first hop that is not, and the last address found stands, or the peer's own
address when there was none. So ``unknown``, an obfuscated RFC 7239 name or a
forged log line never becomes ``REMOTE_ADDR``; the request itself is still
served (refusing it would punish the client for what a proxy wrote). gunicorn
does not read X-Forwarded-For at all; nginx's realip ignores an invalid value
the same way.
"""

from __future__ import annotations

import ipaddress
import socket
from functools import lru_cache
from socket import AF_INET, inet_pton

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# The usual hop: a dotted IPv4 address already in canonical form (four decimal parts, each at most 255,
# no leading zeros, ASCII digits only, no port). Such a hop is its own canonical text and needs no
# ipaddress object: parse_hop would accept it and str() of its address gives the same characters back;
# whether it is one of our proxies is a set lookup (TrustedProxies.single_v4) for the usual one-address
# entries. Anything else (IPv6, a port, brackets, "010.0.0.1", "unknown", a non-ASCII digit) goes the
# long way, parse_hop.
#
# The test is the C library's ``inet_pton(AF_INET)``, which accepts exactly that form (POSIX; glibc
# and musl refuse leading zeros too; tests/test_forwarded.py holds it against ipaddress).
# Figure: the ``ids`` row of ``python -m loadtest.instructions`` (a new X-Forwarded-For address per
# request, Python 3.11.7): 139,905 instructions per request through ipaddress, 102,406 with an
# equivalent regular expression, 99,958 with inet_pton (575c707, which copied the header unchecked:
# 92,628). The test alone: about 1,400 instructions, the pattern about 3,400, ipaddress about 36,000.


def is_plain_ipv4(text: str) -> bool:
    """Whether ``text`` is a dotted IPv4 address in canonical form (see above)."""
    try:
        inet_pton(AF_INET, text)
    except (OSError, ValueError):  # not such an address; ValueError: an embedded NUL
        return False
    return True


def parse_hop(text: str) -> _Address | None:
    """One X-Forwarded-For element as an address, or None when it is not one.

    Accepted: ``192.0.2.7``, ``192.0.2.7:4711``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:4711``. An IPv6 zone (``%eth0``) is refused: it names an interface of
    the proxy, not the client, and could carry any text.
    """
    if not text or len(text) > 64:
        return None
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or not (end == len(text) - 1 or (text[end + 1] == ":" and text[end + 2:].isdigit())):
            return None
        text = text[1:end]
    elif text.count(":") == 1:  # IPv4 with a port
        text, port = text.split(":")
        if not port.isdigit():
            return None
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class TrustedProxies:
    """Decides trust by peer address; ``*`` trusts everyone (only behind a proxy you control).

    ``trusts`` is memoised per instance (1024 addresses, LRU); the memo is
    thread-safe (functools) and belongs to this object, not to the module.
    """

    def __init__(self, entries: tuple[str, ...]) -> None:
        self.any = "*" in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries if e != "*")
        self.configured = self.any or bool(self.networks)  # False: forwarded headers are never looked at
        self.trusts = lru_cache(maxsize=1024)(self._trusts)
        # The IPv4 networks for hops that never become ipaddress objects (is_plain_ipv4): one-address
        # networks (the usual 127.0.0.1) as their canonical text, the others as (address, mask) integers.
        # A peer address in ``single_v4`` is trusted without asking ``trusts`` (the environ builder: a
        # set lookup instead of about 850 instructions for the memoised call, per proxied request).
        self.single_v4 = frozenset(str(net.network_address) for net in self.networks
                                   if net.version == 4 and net.prefixlen == 32)
        self.wide_v4 = tuple((int(net.network_address), int(net.netmask)) for net in self.networks
                             if net.version == 4 and net.prefixlen < 32)

    def _trusts(self, address: str) -> bool:
        if self.any or not address:
            # "" is a Unix-socket peer (REMOTE_ADDR convention, see transport.listener.UNIX_PEER): only a
            # local process allowed to open the socket file got here, the proxy in front, as gunicorn assumes.
            return True
        ip = parse_hop(address.split("%", 1)[0])
        return ip is not None and self._trusts_ip(ip)

    def _trusts_ip(self, ip: _Address) -> bool:
        return self.any or any(ip in net for net in self.networks)

    def _trusts_wide_v4(self, text: str) -> bool:
        """Whether a canonical dotted IPv4 address (a hop is_plain_ipv4 accepted) is in a network of ``wide_v4``."""
        value = int.from_bytes(socket.inet_aton(text), "big")
        return any(value & mask == network for network, mask in self.wide_v4)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The first address, from the right, that is not one of our proxies."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        return self.client_of_trusted(peer, forwarded_for)

    def client_of_trusted(self, peer: str, forwarded_for: str) -> str:
        """``client`` for a peer already found trusted (the environ builder asks once per request).

        Always an address in its canonical text form (or ``peer``), never the header's text as sent.
        """
        if "," not in forwarded_for:
            # The usual header, one plain address: it is the answer whether or not it is one of ours
            # (the walk would stop at it, or end with it), so no split and no trust check. (The ``in``
            # test spares a header of several hops a failed test and its exception.) This is
            # is_plain_ipv4 written out: the call would cost about 350 of the ids row's instructions,
            # behind nginx on every request.
            try:
                inet_pton(AF_INET, forwarded_for)
            except (OSError, ValueError):
                pass  # not a plain address: the walk below decides
            else:
                return forwarded_for
        single, wide = self.single_v4, self.wide_v4
        found = peer
        for hop in reversed(forwarded_for.replace(",", " ").split(" ")):  # nginx splits at either
            if not hop:
                continue  # between two separators: nothing
            if is_plain_ipv4(hop):  # the usual case, without ipaddress
                found = hop
                if hop in single or self.any or (wide and self._trusts_wide_v4(hop)):
                    continue  # one of our proxies
                return found
            ip = parse_hop(hop)
            if ip is None:
                return found  # not an address: stop here, as nginx's realip does
            found = str(ip)
            if not self._trusts_ip(ip):
                return found
        return found

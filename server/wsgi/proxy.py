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
from functools import lru_cache

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


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

    def _trusts(self, address: str) -> bool:
        if self.any or not address:
            # "" is a Unix-socket peer (REMOTE_ADDR convention, see transport.listener.UNIX_PEER): only a
            # local process allowed to open the socket file got here, the proxy in front, as gunicorn assumes.
            return True
        ip = parse_hop(address.split("%", 1)[0])
        return ip is not None and self._trusts_ip(ip)

    def _trusts_ip(self, ip: _Address) -> bool:
        return self.any or any(ip in net for net in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The first address, from the right, that is not one of our proxies."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        return self.client_of_trusted(peer, forwarded_for)

    def client_of_trusted(self, peer: str, forwarded_for: str) -> str:
        """``client`` for a peer already found trusted (the environ builder asks once per request).

        Always an address in its canonical text form (or ``peer``), never the header's text as sent.
        """
        found = peer
        for hop in reversed(forwarded_for.replace(",", " ").split(" ")):  # nginx splits at either
            if not hop:
                continue  # between two separators: nothing
            ip = parse_hop(hop)
            if ip is None:
                return found  # not an address: stop here, as nginx's realip does
            found = str(ip)
            if not self._trusts_ip(ip):
                return found
        return found

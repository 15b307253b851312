"""Which peers may tell us the real client address (X-Forwarded-For) and scheme."""

from __future__ import annotations

import ipaddress
from functools import lru_cache


class TrustedProxies:
    """Decides trust by peer address; ``*`` trusts everyone (only behind a proxy you control)."""

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
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def client(self, peer: str, forwarded_for: str | None) -> str:
        """The first address, from the right, that is not one of our proxies."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        return self.client_of_trusted(peer, forwarded_for)

    def client_of_trusted(self, peer: str, forwarded_for: str) -> str:
        """``client`` for a peer already found trusted (the environ builder asks once per request)."""
        if "," not in forwarded_for:  # one hop, the usual case behind one proxy: it is the answer either way
            return forwarded_for.strip() or peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self.trusts(hop):
                return hop
        return hops[0] if hops else peer

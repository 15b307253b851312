"""Which address X-Forwarded-For gives the application, by the peers we trust. No sockets."""

from __future__ import annotations

import pytest

from server.wsgi.proxy import TrustedProxies


@pytest.mark.parametrize(("peer", "forwarded_for", "client"), [
    ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
    ("127.0.0.1", " 203.0.113.7 ", "203.0.113.7"),
    ("127.0.0.1", "127.0.0.1", "127.0.0.1"),  # only proxies in the chain: the farthest one
    ("127.0.0.1", "   ", "127.0.0.1"),
    ("127.0.0.1", None, "127.0.0.1"),
    ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # the nearest hop we do not trust
    ("127.0.0.1", "198.51.100.1, 127.0.0.1", "198.51.100.1"),
    ("127.0.0.1", "127.0.0.1, 127.0.0.1", "127.0.0.1"),
    ("192.0.2.1", "203.0.113.7", "192.0.2.1"),  # an untrusted peer cannot name a client
])
def test_forwarded_for_picks_the_nearest_untrusted_hop(peer, forwarded_for, client):
    assert TrustedProxies(("127.0.0.1",)).client(peer, forwarded_for) == client

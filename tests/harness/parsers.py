"""Request parsers for the protocol tests, with a server's HeaderCache or without one.

The parser must read every byte stream the same with its caches and without them
(server/protocol/header_cache.py). ``parser_factory("cache")`` makes parsers the way the server
does, all with the same limits sharing one ``HeaderCache`` (a cache per distinct ``Limits``);
``parser_factory("no-cache")`` makes them with ``cache=None``. The ``both_parser_caches`` fixture
puts one of these in place of a test module's ``RequestParser``, so each test runs both ways.
"""

from __future__ import annotations

from collections.abc import Callable

from server.protocol import HeaderCache, Limits, RequestParser
from server.protocol.body import SpillFactory

PARSER_CACHES = ("cache", "no-cache")


def parser_factory(mode: str) -> Callable[..., RequestParser]:
    caches: dict[Limits, HeaderCache] = {}

    def make(limits: Limits | None = None, cache: HeaderCache | None = None,
             spill: SpillFactory | None = None) -> RequestParser:
        limits = limits or Limits()
        if mode == "cache" and cache is None:
            cache = caches.setdefault(limits, HeaderCache(limits))
        return RequestParser(limits, cache, spill)

    return make

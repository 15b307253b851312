"""The HTTP/1.1 protocol core, free of sockets and threads (sans-I/O).

Bytes go in and complete ``Request`` objects or a ``ProtocolError`` come out;
response heads and body framing go in and bytes come out. Everything here can
be tested without a network.
"""

from .errors import ProtocolError
from .events import Request
from .header_cache import HeaderCache
from .limits import Limits
from .parser import Phase, RequestParser
from .response import ResponseCache, ResponsePlan, plan_response

__all__ = ["HeaderCache", "Limits", "Phase", "ProtocolError", "Request", "RequestParser", "ResponseCache",
           "ResponsePlan", "plan_response"]

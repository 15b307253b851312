"""The server's own problem types (RFC 9457): what it answers to requests no application ever saw.

A malformed request, an over-long request line or header block, a body over the
server's limit, a timeout, an unsupported version or expectation, the connection
limit: the server answers these itself, so it also names them. Each status has one
stable ``type`` under ``/problems/``, the path where an application (the bundled
calculator does) can serve a page explaining it; RFC 9457 3.1.1 does not require
that the page exists. A status with no entry here is sent as ``about:blank``,
which RFC 9457 4.2.1 reserves for "nothing to add to the status code".
"""

from __future__ import annotations

from dataclasses import dataclass

TYPE_PREFIX = "/problems/"


@dataclass(frozen=True)
class ProblemType:
    """One kind of failure (RFC 9457): a stable ``type`` URI, its status code, a fixed title and what it means.

    The server's own types are below; an application's (the calculator's) are made of the same class.
    """

    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


SERVER_PROBLEMS: dict[int, ProblemType] = {problem.status: problem for problem in (
    ProblemType("malformed-request", 400, "Malformed HTTP request",
                  "The server could not read the request as HTTP/1.1 (RFC 9112): the detail names the part that "
                  "is wrong. The connection is closed after this answer, since its framing is lost."),
    ProblemType("request-timeout", 408, "Request not received in time",
                  "The request head or body did not arrive within the server's timeout."),
    ProblemType("request-too-large", 413, "Request body over the server limit",
                  "The request body is larger than the server accepts for any request (--max-body-size)."),
    ProblemType("request-line-too-long", 414, "Request line too long",
                  "The request line (method, target and version) is longer than the server accepts "
                  "(--max-request-line); the target is usually the long part."),
    ProblemType("unsupported-expectation", 417, "Expectation not supported",
                  "The Expect header asks for something other than 100-continue, the only expectation known."),
    ProblemType("request-head-too-large", 431, "Request header fields too large",
                  "A header field, the number of fields or the whole header block is over the server's limits."),
    ProblemType("not-implemented", 501, "Not implemented by the server",
                  "The request needs a feature this server does not have: a CONNECT tunnel or a transfer "
                  "coding other than chunked."),
    ProblemType("server-at-capacity", 503, "Server at its connection limit",
                  "The server has as many connections open as it allows; retry after the Retry-After delay."),
    ProblemType("http-version-not-supported", 505, "HTTP version not supported",
                  "Only HTTP/1.0 and HTTP/1.1 are served over this connection."),
)}

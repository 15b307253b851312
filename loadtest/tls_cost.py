"""What TLS costs the server on this machine, with this interpreter's ``ssl`` and OpenSSL.

    python -m loadtest.tls_cost [--certfile C --keyfile K] [--handshakes N] [--requests N] [--rounds R]

Why a tool of its own: the benchmark's TLS rows (scripts/bench) mix OpenSSL's work with the network,
the reactor and the application, and on a shared machine their req/s drifts by a quarter between rounds.
This takes the rest away. A client and a server ``SSLObject`` talk over memory BIOs in one thread, and
only the server's calls are timed, in thread CPU time: one full TLS 1.3 handshake (session tickets
included, as the server sends them), and one keep-alive exchange (decrypt a small request, encrypt a small
answer). That is the floor the server's TLS cannot go below whatever Python does around it, so it answers
"would a newer OpenSSL, another suite or fewer tickets help?" before any server runs.

The trade-off: no kernel, no reactor, no concurrency, so the figures are a lower bound, not a prediction of
req/s. Timings on a virtual machine still vary between rounds; the median of several rounds is printed
with the rounds themselves. Without --certfile/--keyfile it makes a throw-away P-256 certificate with the
``openssl`` command, as the benchmark does.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
from pathlib import Path
from time import thread_time

from .bench.servers import self_signed_certificate

REQUEST = b"GET /add/2/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: tls-cost\r\nAccept: */*\r\n\r\n"
ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n"
          b"Server: calc-server\r\nContent-Length: 1\r\n\r\n5")


class Pair:
    """A client and a server TLS object joined by memory BIOs; ``server_cpu`` sums the server's calls."""

    def __init__(self, server: ssl.SSLContext, client: ssl.SSLContext) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client.wrap_bio(self.c_in, self.c_out)
        self.server = server.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.server_cpu = 0.0

    def handshake(self) -> None:
        client_done = server_done = False
        while not (client_done and server_done):
            if not client_done:
                client_done = _step(self.client.do_handshake)
            self.s_in.write(self.c_out.read())
            if not server_done:
                started = thread_time()
                server_done = _step(self.server.do_handshake)
                self.server_cpu += thread_time() - started
            self.c_in.write(self.s_out.read())
        _step(lambda: self.client.read(1))  # takes the session tickets, as a real client does

    def exchange(self) -> None:
        self.client.write(REQUEST)
        self.s_in.write(self.c_out.read())
        started = thread_time()
        request = self.server.read(65536)
        self.server.write(ANSWER)
        self.server_cpu += thread_time() - started
        self.c_in.write(self.s_out.read())
        if request != REQUEST or self.client.read(65536) != ANSWER:
            raise RuntimeError("the bytes did not come through unchanged")


def _step(call) -> bool:
    try:
        call()
    except ssl.SSLWantReadError:
        return False
    return True


def measure(server: ssl.SSLContext, client: ssl.SSLContext, handshakes: int, requests: int,
            rounds: int) -> dict[str, object]:
    """Server CPU per handshake and per keep-alive exchange, in microseconds, one figure per round."""
    for _ in range(min(50, handshakes)):  # warm caches and OpenSSL's lazily fetched algorithms
        Pair(server, client).handshake()
    per_handshake, per_exchange = [], []
    for _ in range(rounds):
        spent = 0.0
        for _ in range(handshakes):
            pair = Pair(server, client)
            pair.handshake()
            spent += pair.server_cpu
        per_handshake.append(spent / handshakes * 1e6)
        pair.server_cpu = 0.0
        for _ in range(requests):
            pair.exchange()
        per_exchange.append(pair.server_cpu / requests * 1e6)
    return {"version": pair.server.version(), "cipher": pair.server.cipher()[0],
            "handshake_us": per_handshake, "exchange_us": per_exchange}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.tls_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--certfile", type=Path, help="server certificate (PEM); default: a new P-256 one")
    parser.add_argument("--keyfile", type=Path, help="its private key (PEM)")
    parser.add_argument("--handshakes", type=int, default=300, help="handshakes per round (default 300)")
    parser.add_argument("--requests", type=int, default=3000, help="keep-alive exchanges per round (default 3000)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the median is reported (default 5)")
    parser.add_argument("--tickets", type=int, help="TLS 1.3 session tickets per handshake (default: OpenSSL's)")
    args = parser.parse_args(argv)
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("give both --certfile and --keyfile, or neither")
    if min(args.handshakes, args.requests, args.rounds) < 1:
        parser.error("--handshakes, --requests and --rounds must be at least 1")
    with tempfile.TemporaryDirectory() as scratch:
        cert, key = (args.certfile, args.keyfile) if args.certfile else self_signed_certificate(Path(scratch))
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(str(cert), str(key))
        if args.tickets is not None:
            server.num_tickets = args.tickets
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE  # the client's side is not measured; only the server's work counts
        result = measure(server, client, args.handshakes, args.requests, args.rounds)
    handshake, exchange = result["handshake_us"], result["exchange_us"]
    print(f"python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")
    print(f"negotiated {result['version']} {result['cipher']}, {server.num_tickets} session tickets per handshake")
    print(f"server CPU per handshake: {statistics.median(handshake):.0f} us "  # type: ignore[arg-type]
          f"(median of {args.rounds} rounds of {args.handshakes}: {', '.join(f'{x:.0f}' for x in handshake)})")
    print(f"server CPU per keep-alive request: {statistics.median(exchange):.1f} us "  # type: ignore[arg-type]
          f"(decrypt {len(REQUEST)} bytes, encrypt {len(ANSWER)}; median of {args.rounds} rounds of {args.requests})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

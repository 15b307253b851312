"""TLS on the reactor's connections: the context from the settings, and a socket-like stream over ssl.SSLObject.

Why ``ssl.SSLObject`` over two ``ssl.MemoryBIO``s, not a non-blocking ``SSLSocket``
-------------------------------------------------------------------------------------
The reactor reads a connection with one ``recv`` and relies on edge-triggered
readiness: after a short read the kernel buffer is empty, so the next arrival
will be reported. An ``SSLSocket`` breaks that promise: it reads whole records
from the kernel and may keep decrypted bytes (``pending()``) or further records
that no poll will ever report, and it signals "no data" with ``SSLWantReadError``
instead of ``BlockingIOError``. Every read site would need TLS special cases.

With the memory BIOs this module owns the raw socket. ``TLSStream.recv`` reads
ciphertext with a plain ``recv``, decrypts *everything* that arrived, and keeps
the socket contract the reactor already relies on: ``BlockingIOError`` when no
plaintext is available, ``b""`` at EOF, and a full-sized result whenever more
is waiting (decrypted bytes kept back, or a full raw read), so the reactor reads
again exactly as it does for plain sockets. Nothing can hide from the poller.
The common case, a short raw read holding one whole record, takes a fast path of
a few C calls (raw read, BIO write, one ``SSLObject.read``) with no buffering;
anything else (several records, a partial one, EOF, a record OpenSSL must answer)
goes through the general loop.

The handshake is the first phase of the same ``recv``: each arrival of bytes is
fed to OpenSSL and answered without waiting; until the handshake is complete
``recv`` says "nothing yet", and the connection waits in the poller. No
thread ever waits for a client's handshake; a client that stalls or never sends
a ClientHello holds its connection slot only until ``--handshake-timeout`` after
accept (the sweep closes it). Over ``--max-connections`` a TLS connection is
still given its handshake, within the same deadline, so that its ``503`` can be
said inside TLS (acceptor.py).

Writes: plaintext is encrypted and the ciphertext goes to the kernel without
waiting; only what the kernel does not take is queued (and sent first next
time). ``TLSConnection`` (a ``Connection``) overrides ``flush`` so "written"
means the ciphertext left too, and encrypts nothing more while older ciphertext
waits; held (batched) answers, parking for a slow reader, 100-continue, streamed
bodies and the send timeout then work unchanged. Plain connections keep the base
class: the plain path has no TLS check anywhere except ``peer.tls is not None``
when the environ is built (see ``server/wsgi/environ.py``).

The trade-off: one extra copy of each buffer between the BIOs and the socket,
and the ciphertext of a big streamed answer is held in memory up to
``_CHUNK`` bytes at a time. What would break: reading the raw socket anywhere
but here (bytes would bypass OpenSSL), or a TLS first flight (server hello and
certificate chain) that does not fit the socket's send buffer at once - that
connection is dropped rather than waited for, which takes a certificate chain
of hundreds of kilobytes.

The PROXY header, when enabled, comes before the ClientHello on the wire and is
taken off first (``proxy_protocol.take_header``); the bytes after it are left
in the kernel for the handshake.

Certificate rotation: ``TLSContexts.reload`` builds a new context from the
files; connections accepted afterwards use it, connections already open keep
the one they started with.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ..config import Settings
from ..protocol import RequestParser
from ..protocol.writer import error_response, http_date
from ..wsgi.peer import PeerInfo, TLSFacts
from .connection import Connection, ConnectionFactory
from .proxy_protocol import take_header

_RAW = 65536  # ciphertext read per recv
_MSG_PEEK = int(socket.MSG_PEEK)  # a plain int: an IntFlag's & runs Python code
_CHUNK = 65536  # plaintext encrypted at a time by send_all: bounds the ciphertext held in memory
CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_MAX_HELLO_READS = 4  # raw reads per readiness event while handshaking (a ClientHello is a few hundred bytes)


def build_context(settings: Settings) -> ssl.SSLContext:
    """A server context from the settings: TLS 1.2 minimum, ALPN http/1.1, client certificates as asked.

    Raises OSError/ssl.SSLError/ValueError with a message fit for the operator when a file is wrong.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # client-initiated renegotiation is a DoS lever
    password = None
    if settings.keyfile_password_file:
        with open(settings.keyfile_password_file, "rb") as handle:
            password = handle.readline().rstrip(b"\r\n")  # the first line; a trailing newline is not part of it
    context.load_cert_chain(settings.certfile, settings.keyfile or None, password=password)
    if settings.ca_certs:
        context.load_verify_locations(cafile=settings.ca_certs)
    elif settings.cert_reqs != "none":
        raise ValueError(f"--cert-reqs {settings.cert_reqs} needs --ca-certs to verify client certificates")
    context.verify_mode = CERT_REQS[settings.cert_reqs]
    if settings.ciphers:
        context.set_ciphers(settings.ciphers)
    context.set_alpn_protocols(["http/1.1"])
    return context


class TLSContexts:
    """The context new connections get; ``reload`` swaps it (one attribute store, so no lock is needed)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.context = build_context(settings)

    def reload(self) -> str | None:
        """Re-read certificate and key from disk; on any error keep serving with the old ones and say why.

        Returns None on success, else the reason; the caller (SIGHUP) writes one log line either way.
        """
        try:
            self.context = build_context(self.settings)
        except (OSError, ValueError) as exc:
            return str(exc)
        return None


class TLSStream:
    """The socket a TLS connection's owner reads and writes: plaintext in and out, ciphertext on the wire.

    Only the connection's owner (the thread holding ``conn.lock``) calls it.
    """

    __slots__ = ("_cipher", "_eof", "_in", "_out", "_plain", "_proxy", "closing", "conn", "handshaken", "raw", "tls")

    def __init__(self, raw: socket.socket, context: ssl.SSLContext, conn: Connection,
                 proxy: Callable[[str], bool] | None) -> None:
        self.raw = raw
        self.conn: Connection | None = conn
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self._in, self._out, server_side=True)
        self._proxy = proxy  # the trust test while a PROXY header is still due, else None
        self._plain = bytearray()  # decrypted, not yet returned
        self._cipher = bytearray()  # encrypted, not yet accepted by the kernel
        self._eof = False
        self.handshaken = False
        self.closing = False  # after our close_notify: reads drain raw bytes

    # -- reading ------------------------------------------------------------------------------------------

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        if flags or self.closing:
            if flags & _MSG_PEEK and not self.closing:
                return self._peek(size, flags)
            return self.raw.recv(size, flags)
        if not self.handshaken:
            self._handshake()
            return self._read(size)
        if self._plain or self._eof:
            return self._read(size)
        # The common case in a few C calls: one short raw read (the kernel is now empty) holding one whole
        # record. A BlockingIOError from the raw read passes through: nothing is kept back here.
        data = self.raw.recv(_RAW)
        if not data:
            self._eof = True
            return b""
        self._in.write(data)
        if len(data) == _RAW:
            return self._read(size)  # more may be waiting in the kernel
        try:
            plain = self.tls.read(_RAW)  # _RAW exceeds a record (16 KiB): a record's plaintext comes whole
        except ssl.SSLWantReadError:  # part of a record (its rest will be polled), or a record for OpenSSL alone
            if self._out.pending:  # which may need an answer (a key update)
                self._push_out()
            raise BlockingIOError from None
        except ssl.SSLZeroReturnError:
            plain = b""
        if not plain or self._in.pending or self._out.pending or len(plain) > size:
            self._plain += plain  # close_notify, more records, an answer due, more than asked for
            if not plain:
                self._eof = True
            return self._read(size, drained=True)
        return plain

    def _handshake(self) -> None:
        conn = self.conn
        if self._proxy is not None:
            assert conn is not None
            take_header(self.raw, conn, self._proxy, plain=False)
            self._proxy = None
        for _ in range(_MAX_HELLO_READS):  # until the kernel buffer is empty, or the next edge is lost
            data = self.raw.recv(_RAW)
            if not data:
                raise ConnectionAbortedError("client closed during the TLS handshake")
            self._in.write(data)
            if len(data) < _RAW:
                break
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            if not self._push_out():
                raise ConnectionAbortedError("TLS handshake flight did not fit the send buffer") from None
            raise BlockingIOError from None
        except ssl.SSLError as exc:
            if exc.reason == "HTTP_REQUEST":  # OpenSSL recognised a plain HTTP request: say so, briefly
                with contextlib.suppress(OSError):
                    self.raw.send(error_response(400, "this port speaks HTTPS; a plain HTTP request was sent to it",
                                                 date=http_date(time.time())))
            else:
                self._push_out()  # the alert, so the client knows why
            with contextlib.suppress(OSError):
                self.raw.shutdown(socket.SHUT_WR)
            raise
        self.handshaken = True
        self._push_out()  # the last of the handshake (TLS 1.3 session tickets)
        if conn is not None:
            peer = conn.peer
            conn.peer = PeerInfo(peer.address, peer.port, TLSFacts(self.variables()), peer.proxy)

    def _read(self, size: int, drained: bool = False) -> bytes:
        """Decrypt what is buffered, reading the socket until it is empty unless it is known to be (drained)."""
        plain = self._plain
        while True:
            self._decrypt()
            if len(plain) >= size or self._eof or drained:
                break
            try:
                data = self.raw.recv(_RAW)
            except BlockingIOError:
                break
            if not data:
                self._eof = True
                break
            self._in.write(data)
            if len(data) < _RAW:  # the kernel buffer is empty: the next arrival will be polled
                self._decrypt()
                break
        if self._out.pending:  # the peer's records may need an answer (key update, alert)
            self._push_out()
        if plain:
            if len(plain) <= size:
                data = bytes(plain)
                plain.clear()
            else:
                data = bytes(plain[:size])  # exactly size: the reactor will read again for the rest
                del plain[:size]
            return data
        if self._eof:
            return b""
        raise BlockingIOError

    def _decrypt(self) -> None:
        tls, plain = self.tls, self._plain
        while self._in.pending or tls.pending():
            try:
                data = tls.read(_RAW)
            except ssl.SSLWantReadError:
                return
            except ssl.SSLZeroReturnError:  # close_notify: the client is done sending
                self._eof = True
                return
            if not data:  # how an SSLObject reports a close_notify it has read
                self._eof = True
                return
            plain += data

    def _peek(self, size: int, flags: int) -> bytes:
        """MSG_PEEK over what this stream keeps too: decrypted bytes not yet returned come first."""
        if self.handshaken:
            self._decrypt()  # whole records already read from the kernel (nothing more is read)
        if self._plain:
            return bytes(self._plain[:size])
        if self._eof:
            return b""
        return self.raw.recv(size, flags)  # ciphertext still in the kernel counts as unread input

    def buffered_input(self) -> bool:
        """Input read from the kernel but not returned yet: plaintext, or part of a record."""
        return bool(self._plain or self._in.pending)

    # -- writing ---------------------------------------------------------------------------------------------

    def write(self, data: bytes | memoryview) -> bool:
        """Encrypt and hand to the kernel without waiting; True when no ciphertext is left queued.

        The common case (nothing queued before, the kernel takes it all) makes no copy of the ciphertext.
        """
        self.tls.write(data)
        if self._cipher:  # older ciphertext goes first
            self._cipher += self._out.read()
            return self.push()
        cipher = self._out.read()
        try:
            sent = self.raw.send(cipher)
        except BlockingIOError:
            sent = 0
        if sent < len(cipher):
            self._cipher += memoryview(cipher)[sent:]
            return False
        return True

    def send(self, data: bytes | memoryview, flags: int = 0, /) -> int:
        """The Stream protocol's send: all of ``data`` is taken (encrypted; what the kernel refuses is queued)."""
        self.write(data)
        return len(data)

    def queued(self) -> int:
        """Ciphertext the kernel has not taken yet."""
        return len(self._cipher)

    def push(self) -> bool:
        """Hand queued ciphertext to the kernel without waiting; True when none is left."""
        cipher = self._cipher
        if not cipher:
            return True
        try:
            sent = self.raw.send(cipher)
        except BlockingIOError:
            return False
        del cipher[:sent]
        return not cipher

    def _push_out(self) -> bool:
        if self._out.pending:
            self._cipher += self._out.read()
        try:
            return self.push()
        except OSError:
            return False

    # -- socket-like rest --------------------------------------------------------------------------------

    def shutdown(self, how: int) -> None:
        """Our close_notify, then the TCP half-close; reads from now on only drain the connection."""
        if self.handshaken and not self.closing:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.tls.unwrap()  # writes close_notify; waiting for the client's is not needed
            self._push_out()
        self.closing = True
        self.raw.shutdown(how)

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        """Say goodbye with close_notify when it costs nothing (idle keep-alive timeouts, shutdown)."""
        if self.handshaken and not self.closing:
            self.closing = True
            with contextlib.suppress(ssl.SSLError, ValueError):
                self.tls.unwrap()
            self._push_out()
        self.conn = None
        self.raw.close()

    def variables(self) -> dict[str, str]:
        """What the application learns about this TLS connection (environ keys, documented in docs/tls.md)."""
        tls = self.tls
        env: dict[str, str] = {"HTTPS": "on", "SSL_PROTOCOL": tls.version() or "",
                               "SSL_CIPHER": (tls.cipher() or ("",))[0]}
        cert = tls.getpeercert()
        if not cert:
            env["SSL_CLIENT_VERIFY"] = "NONE"
            return env
        env["SSL_CLIENT_VERIFY"] = "SUCCESS"  # the context verified it, or the handshake would have failed
        # getpeercert() types every value of its dict as the union of all of them; these two are always
        # sequences of RDNs, each a tuple of (attribute, value) pairs.
        subject = cast(_RDNSequence, cert.get("subject", ()))
        env["SSL_CLIENT_S_DN"] = _dn(subject)
        env["SSL_CLIENT_I_DN"] = _dn(cast(_RDNSequence, cert.get("issuer", ())))
        env["SSL_CLIENT_S_DN_CN"] = _dn_field(subject, "commonName")
        env["SSL_CLIENT_SERIAL"] = cast(str, cert.get("serialNumber", ""))
        env["SSL_CLIENT_V_START"] = cast(str, cert.get("notBefore", ""))
        env["SSL_CLIENT_V_END"] = cast(str, cert.get("notAfter", ""))
        der = tls.getpeercert(binary_form=True)
        if der:
            env["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(der)
        return env


_RDNSequence = tuple[tuple[tuple[str, str], ...], ...]  # a distinguished name as ssl's getpeercert() gives it
_DN_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C",
             "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "emailAddress",
             "domainComponent": "DC", "serialNumber": "serialNumber"}


def _dn(rdns: _RDNSequence) -> str:
    """A distinguished name as RFC 4514 writes it (most specific first), e.g. ``CN=alice,O=Example``."""
    parts = []
    for rdn in reversed(rdns):
        parts.append("+".join(f"{_DN_SHORT.get(key, key)}={_escape(value)}" for key, value in rdn))
    return ",".join(parts)


def _escape(value: str) -> str:
    out = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if out[:1] in ("#", " "):
        out = "\\" + out
    if out.endswith(" "):
        out = out[:-1] + "\\ "
    return out


def _dn_field(rdns: _RDNSequence, name: str) -> str:
    for rdn in rdns:
        for key, value in rdn:
            if key == name:
                return value
    return ""


class _OnTheWayOut(bytes):
    """``out`` of a TLS connection whose answers are encrypted but not all taken by the kernel yet.

    Empty (joining it to more answers adds nothing) but true, so the reactor's one test for "answers
    not yet on the wire", ``if conn.out``, holds for ciphertext queued in the stream as for plaintext.
    """

    def __bool__(self) -> bool:
        return True


_QUEUED = _OnTheWayOut()


class TLSConnection(Connection):
    """A connection whose stream is a TLSStream: "written" means the ciphertext reached the kernel."""

    __slots__ = ()
    sendfile_ok = False  # the runner reads file_wrapper bodies in blocks instead (see wsgi/file_wrapper.py)
    if TYPE_CHECKING:
        stream: TLSStream  # connection_factory gives every TLSConnection one

    # Connection's handshake_done is a class constant (True), so a plain connection's check is an attribute
    # read, not a call; mypy rejects a property over a plain attribute, though only reads ever happen.
    @property
    def handshake_done(self) -> bool:  # type: ignore[override]
        return self.stream.handshaken

    def flush(self) -> bool:
        """Encrypt and write what is kept, but encrypt nothing more while older ciphertext waits: so the
        plaintext in ``out`` is what the reactor's HOLD_LIMIT bounds, and the ciphertext one flush's worth."""
        stream = self.stream
        if stream._cipher and not stream.push():
            if not self.out:
                self.out = _QUEUED
            return False
        out = self.out
        done = stream.write(out) if out and out is not _QUEUED else True
        self.out = b"" if done else _QUEUED
        return done

    def pending_output(self) -> int:
        return len(self.out) + self.stream.queued()

    def send_all(self, data: bytes | memoryview) -> None:
        """As Connection.send_all, encrypting at most _CHUNK at a time: bounds the ciphertext in memory."""
        if len(data) <= _CHUNK:
            super().send_all(data)
            return
        view = memoryview(data)
        for start in range(0, len(view), _CHUNK):
            super().send_all(view[start:start + _CHUNK])

    def has_unread_input(self) -> bool:
        """The stream may hold what the kernel no longer does (a record read in part)."""
        return self.stream.buffered_input() or super().has_unread_input()

    def send_parts(self, head: bytes, body: bytes) -> None:
        """Encryption copies anyway: one whole answer, kept and parked like any other."""
        self.send_response(head + body)


def connection_factory(contexts: TLSContexts | None, proxy_trusts: Callable[[str], bool] | None
                       ) -> ConnectionFactory | None:
    """What the reactor builds accepted sockets into, or None for the plain default (no wrapper at all)."""
    if contexts is not None:
        def tls_connection(sock: socket.socket, peer: PeerInfo, parser: RequestParser, now: float,
                           send_timeout: float) -> Connection:
            conn = TLSConnection(sock, peer, parser, now, send_timeout)
            conn.stream = TLSStream(sock, contexts.context, conn, proxy_trusts)
            return conn

        return tls_connection
    if proxy_trusts is not None:
        from .proxy_protocol import ProxyPreamble

        def proxied_connection(sock: socket.socket, peer: PeerInfo, parser: RequestParser, now: float,
                               send_timeout: float) -> Connection:
            conn = Connection(sock, peer, parser, now, send_timeout)
            conn.stream = ProxyPreamble(sock, conn, proxy_trusts)  # until the header is read
            return conn

        return proxied_connection
    return None

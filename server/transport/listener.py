"""Listening sockets: TCP, Unix, inherited descriptors and systemd's, plus the process limits behind them.

Every listener ends up as the same thing, a non-blocking listening socket in a
``Listener`` that says what kind it is and how to show it, so the reactor and
the pre-fork master treat all of them alike: one poller watches them all, and
the workers inherit them all across fork.

Unix sockets leave a file behind. A file whose server died is stale and is
replaced; one that still answers belongs to a running server, and taking it
over would silently steal its clients, so that is an error. We remove only
files this process created, and only in the process that created them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass, field
from typing import Literal

from ..bindspec import BindSpec
from .connection import ConnectionFactory

SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): passed sockets start at this descriptor


class ListenError(Exception):
    """A listen address that cannot be served; the message says which and why."""


@dataclass(frozen=True)
class ListenerOptions:
    """What a listener's connections are, beyond its socket: set up before serving, then read-only.

    Replaced whole (``dataclasses.replace``) by whoever learns more: the command line (TLS) and
    ``transport.server.serve`` (the connection factory).
    """

    tls: bool = False  # its connections speak TLS (the scheme it shows is https)
    inode: int | None = None  # of the Unix socket file this process created (so only that one is removed)
    make_connection: ConnectionFactory | None = None  # TLS or PROXY streams (tls.connection_factory); None: plain


@dataclass(eq=False)
class Listener:
    """One listening socket and what the rest of the server needs to know about it."""

    sock: socket.socket
    kind: Literal["tcp", "unix"]  # by address family; decides REMOTE_ADDR and TCP_NODELAY
    origin: str  # how we got it: the --bind text, "--host/--port", or "systemd"
    unlink_path: str | None = None  # a socket file this process created, removed when it stops listening
    options: ListenerOptions = field(default_factory=ListenerOptions)

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    @property
    def scheme(self) -> str:
        return "https" if self.options.tls else "http"

    def display(self) -> str:
        """Where clients connect: http://host:port, http://[v6]:port or unix:/path (and the fd if inherited)."""
        name = self.sock.getsockname()
        if self.kind == "unix":
            text = "unix:" + (name.decode("utf-8", "replace") if isinstance(name, bytes) else name)
        else:
            host, port = name[:2]
            text = f"{self.scheme}://[{host}]:{port}" if ":" in host else f"{self.scheme}://{host}:{port}"
        if self.origin == "systemd":
            text += f" (systemd fd {self.fd})"
        elif self.origin.startswith("fd://"):
            text += f" (fd {self.fd})"
        return text

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def remove_file(self) -> None:
        """Remove the socket file we made, if it is still ours (same inode), so a restart finds no stale one."""
        path = self.unlink_path
        if path is None:
            return
        self.unlink_path = None
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == self.options.inode:
                os.unlink(path)


def open_listeners(specs: tuple[BindSpec, ...], host: str, port: int, backlog: int, umask: str = "",
                   environ: dict[str, str] | None = None) -> list[Listener]:
    """Every socket to serve: systemd's, then each --bind; --host/--port only when neither gave one.

    Raises ListenError; sockets already opened are closed (and their files removed) first.
    """
    opened: list[Listener] = []
    try:
        opened.extend(systemd_listeners(environ))
        for spec in specs:
            opened.append(_open(spec, backlog, umask))
        if not opened:
            try:
                opened.append(Listener(bind_tcp(host, port, backlog), "tcp", "--host/--port"))
            except OSError as exc:
                raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    except BaseException:
        for listener in opened:
            listener.close()
            listener.remove_file()
        raise
    return opened


def _open(spec: BindSpec, backlog: int, umask: str) -> Listener:
    try:
        if spec.kind == "tcp":
            return Listener(bind_tcp(spec.host, spec.port, backlog), "tcp", spec.text)
        if spec.kind == "unix":
            return bind_unix(spec.path, backlog, int(umask, 8) if umask else None, spec.text)
        return adopt_fd(spec.fd, spec.text)
    except ListenError:
        raise
    except OSError as exc:
        raise ListenError(f"cannot listen on {spec.text}: {exc.strerror or exc}") from None


def bind_tcp(host: str, port: int, backlog: int) -> socket.socket:
    """A non-blocking listening socket; ``::`` also accepts IPv4 (dual stack)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def bind_unix(path: str, backlog: int, umask: int | None, text: str) -> Listener:
    """A Unix socket at ``path``: a stale file is replaced, a live server's is refused."""
    _clear_stale(path, text)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with mode 0777 minus the umask: the only moment the mode can be set
        # without a window in which the socket is reachable with looser permissions.
        old = os.umask(umask) if umask is not None else None
        try:
            sock.bind(path)
        finally:
            if old is not None:
                os.umask(old)
        inode = os.stat(path).st_ino
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return Listener(sock, "unix", text, unlink_path=path, options=ListenerOptions(inode=inode))


def _clear_stale(path: str, text: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"cannot listen on {text}: {path} exists and is not a socket; not replacing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # nobody listens: left behind by a server that did not stop cleanly
        return
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # a live server with a full backlog still counts as live
            raise ListenError(f"cannot listen on {text}: a running server is listening on {path}") from None
        raise ListenError(f"cannot listen on {text}: cannot check {path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise ListenError(f"cannot listen on {text}: another server is listening on {path} (stop it, or choose "
                      "another path)")


def adopt_fd(fd: int, origin: str) -> Listener:
    """An inherited descriptor that must be a listening stream socket (TCP or Unix)."""
    try:
        sock = socket.socket(fileno=fd)  # family and type come from the descriptor itself
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ListenError(f"cannot listen on {origin}: descriptor {fd} is not open") from None
        if exc.errno == errno.ENOTSOCK:
            raise ListenError(f"cannot listen on {origin}: descriptor {fd} is not a socket") from None
        raise
    try:
        if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX):
            raise ListenError(f"cannot listen on {origin}: descriptor {fd} is not a TCP or Unix stream socket")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenError(f"cannot listen on {origin}: descriptor {fd} is a socket but not a listening one")
    except BaseException:
        sock.detach()  # not ours to close: the error leaves the descriptor as we found it
        raise
    sock.setblocking(False)
    os.set_inheritable(fd, False)  # as sd_listen_fds does: the application's children do not get it
    return Listener(sock, "unix" if sock.family == socket.AF_UNIX else "tcp", origin)


def systemd_listeners(environ: dict[str, str] | None = None) -> list[Listener]:
    """Sockets passed by systemd socket activation (sd_listen_fds(3)), if they are meant for this process.

    LISTEN_PID must name us: the variables are inherited by children, which
    must not take the sockets for theirs. Like ``sd_listen_fds(1)`` the
    variables are removed afterwards, for the same reason.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if not pid or not count:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(name, None)
    if not pid.isdigit() or int(pid) != os.getpid():
        return []
    if not count.isdigit():
        raise ListenError(f"LISTEN_FDS={count!r} is not a number of descriptors")
    return [adopt_fd(fd, "systemd") for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count))]


def raise_open_file_limit() -> int:
    """Soft limit up to the hard limit, as nginx's worker_rlimit_nofile would; returns the new soft limit."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft

"""Listening anywhere: --bind in every form, Unix sockets, inherited descriptors and systemd socket activation.

All over real sockets: the server is a real child process, Unix clients connect
to the socket file it made, inherited descriptors are sockets this test process
created and passed down, as systemd or a supervisor would.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, RawClient, get, require_tool

# Puts the descriptors named in argv[1] at 3, 4, ... and execs the server with LISTEN_PID naming itself:
# what systemd does between fork and exec. Server arguments follow.
ACTIVATE = """
import fcntl, os, sys
fds = [int(n) for n in sys.argv[1].split(",")]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ["LISTEN_PID"] = sys.argv[2] if sys.argv[2] != "self" else str(os.getpid())
os.environ["LISTEN_FDS"] = str(len(fds))
os.environ["LISTEN_FDNAMES"] = ":".join(["web"] * len(fds))
os.execv(sys.executable, [sys.executable, "-m", "server", *sys.argv[3:]])
"""


def have_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def unix_client(path: str | Path) -> RawClient:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return RawClient(sock)


def ask(client: RawClient, path: str = "/add/2/3") -> tuple[int, bytes]:
    try:
        status, _, body = client.request(get(path))
        return status, body
    finally:
        client.close()


def tcp(address: str) -> RawClient:
    """A client for an ``http://host:port`` or ``http://[v6]:port`` address from the ready line."""
    host, _, port = address.removeprefix("http://").rpartition(":")
    return RawClient.connect((host.strip("[]"), int(port)))


@pytest.fixture
def sock_dir(tmp_path_factory) -> Path:
    # Unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer than that.
    path = Path(os.path.realpath(tmp_path_factory.mktemp("s", numbered=True)))
    if len(str(path)) > 80:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="calc-"))
    return path


def test_several_listeners_of_every_kind_are_served_at_once(server_factory, sock_dir):
    path = sock_dir / "calc.sock"
    binds = ["-b", "127.0.0.1:0", "-b", f"unix:{path}"]
    if have_ipv6_loopback():
        binds += ["-b", "[::1]:0"]
    server = server_factory(*binds, "--no-access-log")
    assert len(server.listening) == len(binds) // 2, server.listening
    assert server.listening[1] == f"unix:{path}"
    for address in server.listening:
        client = unix_client(path) if address.startswith("unix:") else tcp(address)
        assert ask(client) == (200, b"5"), address
    if have_ipv6_loopback():
        assert server.listening[2].startswith("http://[::1]:")
    server.stop()
    assert not path.exists(), "the socket file is removed when the server stops"


def test_ipv6_bind(server_factory):
    if not have_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    server = server_factory("-b", "[::1]:0", "--app", "apps:echo", "--no-access-log")
    assert server.listening[0].startswith("http://[::1]:")
    status, body = ask(tcp(server.listening[0]), "/")
    assert status == 200 and json.loads(body)["remote_addr"] == "::1"


def test_bind_from_the_environment_and_host_port_still_work(server_factory, sock_dir):
    path = sock_dir / "env.sock"
    server = server_factory("--no-access-log", env={"CALC_BIND": f"127.0.0.1:0, unix:{path}"})
    assert [a.split(":")[0] for a in server.listening] == ["http", "unix"]
    assert ask(unix_client(path)) == (200, b"5")
    plain = server_factory("--no-access-log")  # no --bind: --host 127.0.0.1 --port 0 as before
    assert plain.listening == [f"http://127.0.0.1:{plain.port}"]
    assert ask(plain.connect()) == (200, b"5")


def test_unix_socket_peer_environ_and_forwarded_headers(server_factory, sock_dir):
    path = sock_dir / "echo.sock"
    server = server_factory("-b", f"unix:{path}", "--app", "apps:echo")
    assert server.port == 0 and server.listening == [f"unix:{path}"]
    status, body = ask(unix_client(path), "/who")
    info = json.loads(body)
    # The documented convention: a Unix-socket client has no address (gunicorn's), SERVER_* say localhost:80.
    assert (status, info["remote_addr"], info["remote_port"]) == (200, "", "")
    assert (info["server_name"], info["server_port"]) == ("localhost", "80")
    client = unix_client(path)
    status, _, body = client.request(get("/fwd", "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\n"))
    client.close()
    info = json.loads(body)
    assert (info["remote_addr"], info["scheme"]) == ("203.0.113.9", "https"), "the proxy in front is trusted"
    server.wait_for_line(r'^- - - \[.*"GET /who HTTP/1.1" 200')  # the access log shows "-" for no address


@pytest.mark.parametrize("umask", ["077", "0", "027"])
def test_umask_sets_the_socket_file_mode(server_factory, sock_dir, umask):
    path = sock_dir / f"mask{umask}.sock"
    server_factory("-b", f"unix:{path}", "--umask", umask, "--no-access-log")
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o777 & ~int(umask, 8)
    assert ask(unix_client(path)) == (200, b"5")


def test_stale_socket_file_is_replaced(server_factory, sock_dir):
    path = sock_dir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(path))  # a file of a server that died: bound, nobody listening
    leftover.close()
    assert stat.S_ISSOCK(path.stat().st_mode)
    server_factory("-b", f"unix:{path}", "--no-access-log")
    assert ask(unix_client(path)) == (200, b"5")


def test_live_socket_file_is_refused_and_the_running_server_keeps_it(server_factory, sock_dir):
    path = sock_dir / "live.sock"
    server_factory("-b", f"unix:{path}", "--no-access-log")
    inode = path.stat().st_ino
    second = subprocess.run([sys.executable, "-m", "server", "-b", f"unix:{path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=20)
    assert second.returncode == 1
    assert f"cannot listen on unix:{path}: another server is listening on {path}" in second.stderr
    assert "Traceback" not in second.stderr
    assert path.stat().st_ino == inode, "the live server's socket file was left alone"
    assert ask(unix_client(path)) == (200, b"5")


def test_a_file_that_is_not_a_socket_is_never_replaced(sock_dir):
    path = sock_dir / "precious.txt"
    path.write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "server", "-b", "127.0.0.1:0", "-b", f"unix:{path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 1 and "exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me"


@pytest.mark.parametrize(("bind", "message"), [
    ("localhost", "expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"),
    ("::1:80", "an IPv6 address goes in brackets"),
    ("[nope]:80", "is not an IPv6 address"),
    ("127.0.0.1:99999", "port must be 0..65535"),
    ("unix:", "unix: needs a socket path"),
    ("fd://three", "fd:// needs a descriptor number"),
])
def test_malformed_bind_is_refused_before_anything_opens(bind, message):
    result = subprocess.run([sys.executable, "-m", "server", "-b", bind], cwd=ROOT, capture_output=True,
                            text=True, timeout=20)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_fd_that_is_not_a_listening_socket_is_refused():
    with socket.socket() as unbound:
        fd = unbound.fileno()
        result = subprocess.run([sys.executable, "-m", "server", "-b", f"fd://{fd}", "-b", "fd://900"], cwd=ROOT,
                                capture_output=True, text=True, timeout=20, pass_fds=(fd,))
    assert result.returncode == 1 and f"fd://{fd}: descriptor {fd} is a socket but not a listening one" \
        in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_inherited_descriptor_is_served(server_factory):
    parent = socket.create_server(("127.0.0.1", 0))
    port = parent.getsockname()[1]
    fd = parent.fileno()
    server = server_factory("-b", f"fd://{fd}", "--app", "apps:echo", "--no-access-log", pass_fds=(fd,))
    parent.close()  # the server's copy is the one that listens now
    assert server.listening == [f"http://127.0.0.1:{port}"] and server.port == port
    status, body = ask(RawClient.connect(("127.0.0.1", port)), "/inherited")
    assert status == 200 and json.loads(body)["remote_addr"] == "127.0.0.1"


def _activate(server_factory, sockets: list[socket.socket], listen_pid: str, *args: str):
    fds = [s.fileno() for s in sockets]
    command = [sys.executable, "-c", ACTIVATE, ",".join(map(str, fds)), listen_pid]
    server = server_factory(*args, command=command, pass_fds=tuple(fds))
    for s in sockets:
        s.close()
    return server


@pytest.mark.parametrize("workers", ["1", "2"])
def test_systemd_socket_activation_serves_every_passed_socket(server_factory, sock_dir, workers):
    tcp_sock = socket.create_server(("127.0.0.1", 0))
    port = tcp_sock.getsockname()[1]
    path = sock_dir / "activated.sock"
    unix_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_sock.bind(str(path))
    unix_sock.listen(16)
    server = _activate(server_factory, [tcp_sock, unix_sock], "self", "--app", "apps:listen_env",
                       "--workers", workers, "--no-access-log")
    # Only systemd's sockets: --host/--port (127.0.0.1:0 from the fixture) are not used when sockets are passed.
    assert server.listening == [f"http://127.0.0.1:{port}", f"unix:{path}"]
    assert "(systemd fd 3)" in server.output() and "(systemd fd 4)" in server.output()
    for client in (RawClient.connect(("127.0.0.1", port)), unix_client(path)):
        status, body = ask(client, "/")
        info = json.loads(body)
        assert status == 200
        # sd_listen_fds(unset=1): the variables are gone, so the application's children will not take the sockets
        assert (info["LISTEN_PID"], info["LISTEN_FDS"], info["LISTEN_FDNAMES"]) == (None, None, None)
        if workers == "2":
            assert info["pid"] != server.proc.pid, "a pre-forked worker answered"
    server.stop()
    assert path.exists(), "a socket file systemd made is systemd's to remove"


def test_socket_activation_meant_for_another_process_is_ignored(server_factory):
    decoy = socket.create_server(("127.0.0.1", 0))
    decoy_port = decoy.getsockname()[1]
    server = _activate(server_factory, [decoy], "1", "--no-access-log")
    assert server.listening == [f"http://127.0.0.1:{server.port}"] and server.port != decoy_port
    assert ask(server.connect()) == (200, b"5")


def test_several_listeners_with_pre_forked_workers(server_factory, sock_dir):
    path = sock_dir / "workers.sock"
    server = server_factory("-b", "127.0.0.1:0", "-b", "127.0.0.1:0", "-b", f"unix:{path}", "--workers", "2",
                            "--app", "apps:echo", "--no-access-log")
    assert len(server.listening) == 3
    pids = set()
    for _ in range(6):
        for address in server.listening:
            client = unix_client(path) if address.startswith("unix:") else tcp(address)
            status, body = ask(client, "/")
            assert status == 200
            pids.add(json.loads(body)["pid"])
    assert server.proc.pid not in pids and pids, "workers, not the master, answer on every listener"
    server.stop()
    assert not path.exists()


def test_real_systemd_socket_activate_tool(sock_dir):
    """systemd's own launcher (systemd-socket-activate) as the outside oracle for the LISTEN_* protocol.

    It listens, and on the first connection execs the server with the sockets at fds 3 and 4; the
    connection that woke it is answered by the server it started.
    """
    tool = require_tool("systemd-socket-activate", "systemd's socket-activation launcher")
    with socket.socket() as probe:  # the tool takes no port 0: ask the kernel for a free one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    path = sock_dir / "tool.sock"
    python_path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])  # the tool passes on only what -E names
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", "-l", str(path), "-E", f"PYTHONPATH={python_path}",
                             sys.executable, "-m", "server", "--app", "apps:listen_env", "--no-access-log",
                             "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
        assert lines == [f"Listening on 127.0.0.1:{port} as 3.\n", f"Listening on {path} as 4.\n"], lines
        status, body = ask(RawClient.connect(("127.0.0.1", port), timeout=15), "/")
        info = json.loads(body)
        assert status == 200 and info["pid"] == proc.pid and info["LISTEN_FDS"] is None
        status, body = ask(unix_client(path), "/")
        assert status == 200 and json.loads(body)["pid"] == proc.pid
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    # Only the passed sockets: --port 0 is not used when systemd passes some.
    assert f"listening on http://127.0.0.1:{port} (systemd fd 3), unix:{path} (systemd fd 4) (pid" in output, output
    assert "Traceback" not in output

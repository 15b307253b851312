"""One access-log line per request, in a bounded buffer that a writer thread empties.

Who touches what. Request threads (and the event loop, for requests refused
before the application) call ``AccessLog.log``: they format the line outside
any lock, then append it to ``_pending`` under ``_lock``. The writer thread
(``access-log``) is the only one that writes to the descriptor; every 50 ms
it takes the whole batch under the lock and writes it without the lock.
``close`` and ``flush`` (main thread) only ask the writer and wait for it.

Why a bound, and why drop. When the output stalls (stdout a pipe nobody reads:
Docker's blocking log mode when its driver stalls) the writer blocks in
``write`` and lines pile up. A request thread must never wait for the log, so
the log cannot push back on requests; instead the buffer holds at most
``BUFFER_LIMIT`` bytes, and a line that does not fit is dropped and counted.
Memory is then bounded by two buffers (the one being written and the one
filling). The count is exported as ``calc_server_access_log_dropped_lines_total``
and, once the output moves again, the writer says in the error log how many
lines were lost. Docker's own ``mode: non-blocking`` makes the same trade.

Escaping. Every field a client can influence is escaped, in every format, so
no header value can end a line, fake a field or confuse a terminal:

* text formats (``combined`` and templates) write printable ASCII as it is and
  every other byte as ``\\xHH``, the double quote and the backslash included,
  as nginx's default ``escape`` does, and a space too in the fields written
  without quotes (address, request line parts, request id); a line is always
  printable ASCII, and its fields split unambiguously;
* ``json`` writes UTF-8 text as JSON strings with every control character (C0,
  DEL, C1) and every non-ASCII character as ``\\uXXXX``; a byte that is not
  UTF-8 becomes the lone surrogate ``\\udcHH`` (Python's surrogateescape), so
  the line is always ASCII, always valid JSON, and the original bytes can be
  recovered.

Header values reach here as the parser keeps them: bytes decoded as Latin-1,
one character per byte.
"""

from __future__ import annotations

import errno
import os
import re
import select
import threading
import time
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii

from . import errorlog

BUFFER_LIMIT = 1 << 20  # bytes of lines waiting for the writer; beyond it lines are dropped and counted
FORMATS = ("combined", "json")  # or a template with %(atom)s fields, see TemplateFormat

_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# byte value -> its escape, for every byte a text line writes escaped (C0, ", \, DEL, 0x80-0xff)
_TEXT_ESCAPES = {b: f"\\x{b:02X}" for b in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def escape_text(text: str) -> str:
    """A field for a text line: printable ASCII but ``"`` and ``\\`` as is, any other byte as ``\\xHH``."""
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    if not all(c <= "\xff" for c in text):  # not from the wire; as its UTF-8 bytes
        text = text.encode("utf-8", "surrogatepass").decode("latin-1")
    return text.translate(_TEXT_ESCAPES)


def escape_token(text: str) -> str:
    """A field written without quotes (address, method, target, version, request id): a space escaped too."""
    text = escape_text(text)
    return text.replace(" ", "\\x20") if " " in text else text


def escape_json(text: str) -> str:
    """A field for a JSON line, quotes included: the value's bytes read as UTF-8, ASCII-only output."""
    if not text.isascii():
        if all(c <= "\xff" for c in text):  # bytes as the parser keeps them (Latin-1): read them as UTF-8
            text = text.encode("latin-1").decode("utf-8", "surrogateescape")
    elif "\x7f" in text:
        return encode_basestring_ascii(text).replace("\x7f", "\\u007f")
    return encode_basestring_ascii(text)


class Entry:
    """What one request contributes to the access log (made only for template formats)."""

    __slots__ = ("agent", "client", "duration", "method", "referer", "request_id", "size", "status", "target",
                 "version", "when")

    def __init__(self, client: str, method: str, target: str, version: str, status: int, size: int,
                 duration: float, referer: str | None, agent: str | None, request_id: str | None,
                 when: float) -> None:
        self.client, self.method, self.target, self.version = client, method, target, version
        self.status, self.size, self.duration, self.when = status, size, duration, when
        self.referer, self.agent, self.request_id = referer, agent, request_id


def _clf_time(when: float) -> str:
    t = time.gmtime(when)
    return f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"


def _iso_time(when: float) -> str:
    """nginx's ``$time_iso8601`` (in UTC), so the two logs sort and join alike."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(when))


# gunicorn's access-log atoms that this server can fill in, each from an Entry.
_ATOMS: dict[str, Callable[[Entry], str]] = {
    "h": lambda e: e.client or "-",
    "l": lambda e: "-",
    "u": lambda e: "-",
    "t": lambda e: f"[{_clf_time(e.when)}]",
    "r": lambda e: f"{e.method} {e.target} {e.version}",
    "m": lambda e: e.method,
    "U": lambda e: e.target.split("?", 1)[0],
    "q": lambda e: e.target.partition("?")[2],
    "H": lambda e: e.version,
    "s": lambda e: str(e.status),
    "B": lambda e: str(e.size),
    "b": lambda e: str(e.size) if e.size else "-",
    "f": lambda e: e.referer or "-",
    "a": lambda e: e.agent or "-",
    "T": lambda e: str(int(e.duration)),
    "M": lambda e: str(int(e.duration * 1000)),
    "D": lambda e: str(int(e.duration * 1_000_000)),
    "L": lambda e: f"{e.duration:.6f}",
    "p": lambda e: f"<{os.getpid()}>",
    "{referer}i": lambda e: e.referer or "-",
    "{user-agent}i": lambda e: e.agent or "-",
    "{x-request-id}i": lambda e: e.request_id or "-",
}
_ATOM = re.compile(r"%\(([^)]*)\)s")


class TemplateFormat:
    """A gunicorn-style template such as ``%(h)s "%(r)s" %(s)s %(L)s``; every value escaped as text."""

    def __init__(self, template: str) -> None:
        self.parts: list[str | Callable[[Entry], str]] = []
        position = 0
        for match in _ATOM.finditer(template):
            atom = match.group(1)
            fill = _ATOMS.get(atom) or _ATOMS.get(atom.lower() if atom.startswith("{") else atom)
            if fill is None:
                known = ", ".join(sorted(_ATOMS))
                raise ValueError(f"unknown access-log atom %({atom})s; known: {known}")
            self.parts.append(template[position:match.start()].replace("%%", "%"))
            self.parts.append(fill)
            position = match.end()
        self.parts.append(template[position:].replace("%%", "%"))
        if len(self.parts) == 1:
            raise ValueError("a template needs at least one %(atom)s field, such as %(h)s or %(r)s")

    def __call__(self, entry: Entry) -> str:
        return "".join(part if isinstance(part, str) else escape_text(part(entry)) for part in self.parts) + "\n"


def check_format(text: str) -> str:
    """The --access-log-format setting: ``combined``, ``json`` or a template (ValueError says what is wrong)."""
    if text in FORMATS:
        return text
    if "%(" not in text:
        raise ValueError(f"expected combined, json or a template with %(atom)s fields, got {text!r}")
    TemplateFormat(text)
    return text


class AccessLog:
    """The access log of one serving process (see the module docstring for its threads and its bound)."""

    def __init__(self, fd: int = 1, interval: float = 0.05, *, line_format: str = "combined",
                 exclude: Iterable[str] = (), buffer_limit: int = BUFFER_LIMIT) -> None:
        self._fd = fd
        self._interval = interval
        self._json = line_format == "json"
        self._template = TemplateFormat(line_format) if line_format not in FORMATS else None
        self._exclude = frozenset(exclude)
        self._limit = buffer_limit
        self._lock = threading.Lock()  # guards the four below
        self._pending: list[str] = []
        self._pending_size = 0
        self._dropped = 0
        self._writing = False  # the writer holds a batch it has not finished writing
        self._reported = 0  # writer thread only: drops already told to the error log
        # (second, its text) of the last line: a line in the same second reuses the text. Replaced whole by
        # whichever request thread sees a new second (one reference store: any thread reads a consistent pair).
        self._stamp: tuple[int, str] = (-1, "")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines dropped so far because the output did not keep up (or failed)."""
        return self._dropped

    def log(self, client: str, method: str, target: str, version: str, status: int, size: int,
            duration: float, referer: str | None, agent: str | None, request_id: str | None) -> None:
        if self._exclude and target.split("?", 1)[0] in self._exclude:
            return
        when = time.time()
        second = int(when)
        stamp = self._stamp
        if stamp[0] != second:
            stamp = self._stamp = (second, _iso_time(second) if self._json else _clf_time(second))
        if self._template is not None:
            line = self._template(Entry(client, method, target, version, status, size, duration, referer, agent,
                                        request_id, when))
        elif self._json:
            line = (f'{{"time":"{stamp[1]}","request_id":{escape_json(request_id or "")},'
                    f'"remote_addr":{escape_json(client)},"method":{escape_json(method)},'
                    f'"uri":{escape_json(target)},"protocol":{escape_json(version)},"status":{status},'
                    f'"body_bytes_sent":{size},"request_time":{duration:.6f},'
                    f'"referer":{escape_json(referer or "")},"user_agent":{escape_json(agent or "")}}}\n')
        else:
            referer, agent, request_id = referer or "-", agent or "-", request_id or "-"
            tokens = client + method + target + version + request_id
            every = tokens + referer + agent
            if not (every.isascii() and every.isprintable() and '"' not in every and "\\" not in every
                    and " " not in tokens):  # the usual line needs no escaping: one check for all its fields
                client, method, target = escape_token(client), escape_token(method), escape_token(target)
                version, request_id = escape_token(version), escape_token(request_id)
                referer, agent = escape_text(referer), escape_text(agent)
            line = (f'{client or "-"} - - [{stamp[1]}] "{method} {target} {version}" {status} {size} '
                    f'"{referer}" "{agent}" {duration:.6f} rid={request_id}\n')
        with self._lock:
            if self._pending_size + len(line) > self._limit and self._pending:
                self._dropped += 1
                return
            self._pending.append(line)
            self._pending_size += len(line)

    def flush(self, timeout: float = 1.0) -> bool:
        """Have the writer write what is pending; wait up to ``timeout``. False if the output stayed blocked."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending and not self._writing:
                    return True
            time.sleep(0.005)
        return False

    def close(self, timeout: float = 2.0) -> None:
        """Stop the writer after it wrote what is pending; a blocked output gets ``timeout`` seconds, no more."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            self._write_pending()
            if stopping:
                return

    def _write_pending(self) -> None:
        with self._lock:
            batch, self._pending, self._pending_size = self._pending, [], 0
            self._writing = bool(batch)
            dropped = self._dropped
        try:
            if batch and not self._write("".join(batch).encode("utf-8", "surrogateescape")):
                with self._lock:
                    self._dropped += len(batch)
                    dropped = self._dropped
        finally:
            with self._lock:
                self._writing = False
        if dropped > self._reported:
            errorlog.warning("access log: %d lines dropped because its output did not keep up (%d in all; "
                             "see calc_server_access_log_dropped_lines_total)", dropped - self._reported, dropped)
            self._reported = dropped

    def _write(self, data: bytes) -> bool:
        """Write all of ``data``, waiting as long as the output needs; False when it is gone."""
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._fd, view)
            except BlockingIOError:  # a descriptor inherited in non-blocking mode: wait until it drains
                select.select([], [self._fd], [], 1.0)
                continue
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                return False  # stdout gone (closed pipe): logging must never take the server down
            view = view[written:]
        return True

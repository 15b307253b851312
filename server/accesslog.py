"""One line per request on stdout, written in batches so logging never blocks a request on I/O."""

from __future__ import annotations

import os
import threading
import time

_MONTHS = ("", "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class AccessLog:
    """Combined-log-format lines plus duration and request id, flushed by a small background thread.

    Appending to a list is atomic under the GIL, so request threads never
    wait on a lock or on a slow stdout pipe; the flusher writes every 50 ms.
    """

    def __init__(self, fd: int = 1, interval: float = 0.05) -> None:
        self._fd = fd
        self._pending: list[str] = []
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def log(self, client: str, method: str, target: str, version: str, status: int, size: int,
            duration: float, referer: str | None, agent: str | None, request_id: str | None) -> None:
        t = time.gmtime()
        stamp = f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} +0000"
        self._pending.append(
            f'{client or "-"} - - [{stamp}] "{_clean(method)} {_clean(target)} {version}" {status} {size} '
            f'"{_clean(referer or "-")}" "{_clean(agent or "-")}" {duration:.6f} rid={_clean(request_id or "-")}\n'
        )

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            data = "".join(pending).encode("utf-8", "replace")
            while data:
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    time.sleep(0.001)
                    continue
                except OSError:
                    return  # stdout gone (closed pipe): logging must never take the server down
                data = data[written:]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()


def _clean(text: str) -> str:
    """Keep a hostile target or header from forging log lines or breaking the quoting."""
    if text.isprintable() and '"' not in text:
        return text
    return "".join(c if c.isprintable() and c != '"' else f"\\x{ord(c):02x}" for c in text)

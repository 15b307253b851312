"""One interpreter's line in scripts/test's summary, from its pytest output on stdin.

Usage: python scripts/lib/pytest_summary.py NAME EXIT_STATUS SECONDS < pytest-output
Prints e.g. ``python3.14: 812 passed, 0 failed, 3 skipped`` alone on its line, the plain closing line that
CI's readers recognise, after a line with the time it took (and the exit status if it failed). A run that
ended without pytest's final line (it could not start, or was killed) says so, with its exit status.
"""

from __future__ import annotations

import re
import sys

_FINAL = re.compile(r"^=*\s*(?P<counts>(?:no tests ran|\d+ \w+).*?) in [0-9.]+s(?: \([0-9:]+\))?\s*=*$")
_COUNT = re.compile(r"(?P<n>\d+) (?P<what>passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def main() -> int:
    name, status, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    final = None
    for line in sys.stdin:
        match = _FINAL.match(line.strip())
        if match:
            final = match["counts"]
    took = f"{seconds // 60}m{seconds % 60:02d}s"
    if final is None:
        print(f"{name}: no pytest result (exit status {status}) after {took}")
        return 0
    counts = {"passed": 0, "failed": 0}
    for match in _COUNT.finditer(final):
        what = match["what"]
        what = {"error": "errors", "warning": "warnings"}.get(what, what)
        counts[what] = counts.get(what, 0) + int(match["n"])
    counts["failed"] += counts.pop("errors", 0)
    counts.pop("warnings", None)
    counts.pop("deselected", None)
    parts = [f"{n} {what}" for what, n in counts.items() if n or what in ("passed", "failed")]
    verdict = "" if status == 0 else f", exit status {status}: FAILED"
    print(f"{name} ran for {took}{verdict}")
    print(f"{name}: {', '.join(parts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

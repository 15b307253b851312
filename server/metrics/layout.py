"""Where each number lives in a row of counters: fixed offsets, so a row can sit in shared memory.

Every label value a counter can take is known in advance: the nine standard
methods plus ``OTHER``, every status code registered with IANA plus one
overflow value per class (``2xx`` for an unregistered 299), and the histogram's
buckets. That bounds what a client can make us count (no cardinality blow-up
from made-up methods) and gives every series a fixed index, which is what lets
a worker's threads write into memory the master reads without any protocol.
"""

from __future__ import annotations

import http

METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "OTHER")

# Status label values: the registered codes, then one per class for anything else (1xx .. 5xx).
_REGISTERED = sorted({int(s) for s in http.HTTPStatus if 100 <= s <= 599})
STATUSES: tuple[str, ...] = (*(str(code) for code in _REGISTERED), "1xx", "2xx", "3xx", "4xx", "5xx")
_CLASS_BASE = len(_REGISTERED)
# status code (100..599) -> its label's index; one dict lookup on the hot path
STATUS_SLOT: dict[int, int] = {code: _CLASS_BASE + code // 100 - 1 for code in range(100, 600)}
STATUS_SLOT.update({code: i for i, code in enumerate(_REGISTERED)})

# Request duration buckets (upper bounds, seconds): 100 microseconds to 10 seconds, then +Inf.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_NM, _NS = len(METHODS), len(STATUSES)

# Offsets in a row. Counters first (summed across threads and workers, kept when a worker dies) ...
REQUESTS = 0  # [method][status]
DURATION = REQUESTS + _NM * _NS  # one count per bucket, not cumulative (+Inf last); cumulated when read
DURATION_SUM = DURATION + len(BUCKETS) + 1  # a double (seconds), through the row's float view
ACCEPTED = DURATION_SUM + 1
REFUSED = ACCEPTED + 1
BYTES_IN = REFUSED + 1
BYTES_OUT = BYTES_IN + 1
PROTOCOL_ERRORS = BYTES_OUT + 1  # [status]
ACCESS_LOG_DROPPED = PROTOCOL_ERRORS + _NS  # lines the access log dropped (its output stalled), main thread's row
COUNTERS_END = ACCESS_LOG_DROPPED + 1
# ... then gauges, which only mean something while their process lives (written by its main thread).
OPEN_CONNECTIONS = COUNTERS_END
IDLE_CONNECTIONS = OPEN_CONNECTIONS + 1
BUSY_THREADS = IDLE_CONNECTIONS + 1
ROW = BUSY_THREADS + 1  # cells in a row

# method -> offset of its block of statuses in REQUESTS
METHOD_BASE: dict[str, int] = {m: REQUESTS + i * _NS for i, m in enumerate(METHODS)}
OTHER_BASE = METHOD_BASE["OTHER"]

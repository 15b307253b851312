"""The metrics store in-process: serving threads count while the main thread publishes and a scrape reads.

server/metrics/store.py's rule: every cell has one writer, the thread whose Recorder it is; the main
thread copies each thread's list into shared memory, and a reader sums rows. That must hold without
help from a global interpreter lock: no count lost, and every reading one that was reached.

Under CPython 3.11's GIL this test cannot fail even if the rule were broken: a thread switch never
falls between the read and the write of ``counts[i] += 1`` (tried: all four threads counting into one
Recorder still passed, with a switch interval of a microsecond too). It is the check for a
free-threaded interpreter (3.13t and later), where two threads adding to one cell do lose counts.
"""

from __future__ import annotations

import os
import threading

from server.metrics.layout import BYTES_IN, BYTES_OUT, DURATION, METHOD_BASE, STATUS_SLOT
from server.metrics.store import SharedStore

THREADS = 4
REQUESTS = 20_000
GET_200 = METHOD_BASE["GET"] + STATUS_SLOT[200]


def test_serving_threads_count_exactly_while_the_main_thread_publishes_and_scrapes():
    store = SharedStore(slots=1, threads=THREADS)
    store.use_alone(os.getpid())
    recorders = store.recorders()
    assert recorders is not None
    go = threading.Barrier(THREADS + 1)

    def serve(index: int) -> None:
        recorder = recorders.threads[index]  # this thread's own, as each reactor thread has
        go.wait()
        for _ in range(REQUESTS):
            recorder.bytes_in += 40
            recorder.request("GET", 200, 0.0002, 100)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    go.wait()
    readings = []
    while any(thread.is_alive() for thread in threads):
        recorders.publish(THREADS, 0, THREADS)  # what the main thread's sweep does 4 times a second
        readings.append(store.totals().cells[GET_200])
    for thread in threads:
        thread.join()
    recorders.publish(0, 0, 0)
    final = store.totals()

    assert final.cells[GET_200] == THREADS * REQUESTS
    assert final.cells[DURATION + 1] == THREADS * REQUESTS  # the 250 microsecond bucket
    assert final.cells[BYTES_IN] == THREADS * REQUESTS * 40
    assert final.cells[BYTES_OUT] == THREADS * REQUESTS * 100
    assert abs(final.duration_sum - THREADS * REQUESTS * 0.0002) < 1e-6
    assert readings == sorted(readings), "a scrape saw a count go backwards"
    assert all(0 <= reading <= THREADS * REQUESTS for reading in readings)

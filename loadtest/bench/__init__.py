"""Side-by-side benchmark: wrk against this server, gunicorn, waitress, granian and a fixed-200 nginx.

Run through ``scripts/bench`` (which installs wrk, nginx and the Python tools first)::

    scripts/bench                       # the full run: 10 s per measurement, 2 s warm-up, one round
    scripts/bench --rounds 3            # three interleaved rounds, medians reported
    scripts/bench --duration 3 --warmup 1 --servers calc-server,granian --skip-idle --no-write  # a quick look

Tables (docs/benchmarks.md explains each):

1. direct: each server alone, one process pinned to CPU 0, wrk pinned to CPU 1, one table per
   workload (workloads.py): the repeated ``GET /add/2/3`` and ``POST /calc``, GET with a new
   X-Request-ID and X-Forwarded-For per request, one connection at a time, a Flask app, 1 MiB answers;
2. through nginx: a plain nginx (upstream keepalive) in front of every server;
3. through the project's nginx template (request ids, JSON access log, rate-limit zone) in front of
   this server and granian;
4. TLS keep-alive and new handshakes per second; metrics on and off (when the server has them);
5. idle connections: this server with and without 10,000 idle keep-alive connections.

Modules: ``procs`` (child processes, pinning, CPU accounting), ``workloads`` (what is requested and
the answer checks), ``servers`` (starting the servers and nginx), ``measure`` (wrk runs),
``report`` (tables, chart, result files), ``main`` (the run and the command line), ``apps`` (the
Flask + 1 MiB application the servers host). Every process started here runs in its own process
group and is stopped at the end, on errors and on Ctrl-C too.
"""

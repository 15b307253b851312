-- wrk script for loadtest/bench.py. One argument after "--" picks the request:
--   get  (default)  GET /add/2/3
--   post            POST /calc {"op": "mult", "arg1": 2, "arg2": 4} as application/json
-- The request is built once per thread (static), so the script costs wrk nothing per request.
-- At the end it prints one line "BENCH-JSON {...}" with the counts and latency percentiles
-- (microseconds), so the harness need not scrape wrk's human-readable summary.

function init(args)
  local mode = args[1] or "get"
  if mode == "post" then
    wrk.method = "POST"
    wrk.path = "/calc"
    wrk.body = '{"op": "mult", "arg1": 2, "arg2": 4}'
    wrk.headers["Content-Type"] = "application/json"
  elseif mode == "get" then
    wrk.method = "GET"
    wrk.path = "/add/2/3"
  else
    error("unknown mode " .. mode .. " (get or post)")
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, '
      .. '"max_us": %d, "mean_us": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end

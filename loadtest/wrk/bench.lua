-- wrk script for scripts/bench (loadtest/bench/). One argument after "--" picks the request:
--   get   (default)  GET /add/2/3
--   post             POST /calc {"op": "mult", "arg1": 2, "arg2": 4} as application/json
--   ids              GET /add/2/3 with a new X-Request-ID and X-Forwarded-For on every request,
--                    as a proxy sends them (a header block never seen before, every time)
--   hello            GET /hello/bench (the Flask app of loadtest/bench/apps.py)
--   big              GET /big (1 MiB answer, same app)
--   close            GET /add/2/3 with "Connection: close": a new connection (over TLS: a new
--                    handshake) for every request
-- Except for "ids", the request is built once per thread (static), so it costs wrk nothing per
-- request. At the end it prints one line "BENCH-JSON {...}" with the counts and latency
-- percentiles (microseconds), so the harness need not scrape wrk's human-readable summary.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

local counter = 0
local id_prefix = "00000000"

local function request_with_ids()
  counter = counter + 1
  wrk.headers["X-Request-ID"] = string.format("%s-%012d", id_prefix, counter)
  wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(counter / 65536) % 256, math.floor(counter / 256) % 256,
                                                 counter % 256)
  return wrk.format()
end

function init(args)
  local mode = args[1] or "get"
  wrk.method = "GET"
  if mode == "post" then
    wrk.method = "POST"
    wrk.path = "/calc"
    wrk.body = '{"op": "mult", "arg1": 2, "arg2": 4}'
    wrk.headers["Content-Type"] = "application/json"
  elseif mode == "get" then
    wrk.path = "/add/2/3"
  elseif mode == "ids" then
    wrk.path = "/add/2/3"
    id_prefix = string.format("%08x", (thread_number or 1) * 2654435761 % 4294967296)
    request = request_with_ids
  elseif mode == "hello" then
    wrk.path = "/hello/bench"
  elseif mode == "big" then
    wrk.path = "/big"
  elseif mode == "close" then
    wrk.path = "/add/2/3"
    wrk.headers["Connection"] = "close"
  else
    error("unknown mode " .. mode .. " (get, post, ids, hello, big or close)")
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

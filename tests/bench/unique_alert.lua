-- wrk script for `make bench`: one unique TradingView-style alert per request, then one machine-readable result line.
-- Settings come from the environment (wrk's own argument passing differs between builds):
--   BENCH_TOKEN  the webhook secret to put in each alert
--   BENCH_RUN    a tag unique to this wrk run, so ids never repeat across the warm-up and the measured run

local token = os.getenv("BENCH_TOKEN") or "bench-secret"
local run = os.getenv("BENCH_RUN") or tostring(os.time())

-- setup() runs in the main Lua state once per thread: number the threads and keep them for done().
local threads = {}
local next_thread = 1

function setup(thread)
   thread:set("tid", next_thread)
   table.insert(threads, thread)
   next_thread = next_thread + 1
end

-- Everything below runs in each thread's own Lua state.
local counter = 0
statuses = {}

function init(args)
   wrk.method = "POST"
   wrk.headers["Content-Type"] = "application/json"
end

function request()
   counter = counter + 1
   -- run tag + thread id + counter: unique across threads and runs, so dedup never short-circuits a request.
   local body = string.format(
      '{"token":"%s","id":"bench-%s-%d-%d","symbol":"BTCUSDT.P","action":"buy","qty":"0.01"}',
      token, run, tid, counter)
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local merged = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   local parts = {}
   local non_2xx = 0
   for status, count in pairs(merged) do
      table.insert(parts, string.format('"%d":%d', status, count))
      if status < 200 or status > 299 then non_2xx = non_2xx + count end
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"requests_per_s":%.2f,'
         .. '"p50_us":%d,"p75_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"p9999_us":%d,'
         .. '"max_us":%d,"mean_us":%.1f,"stdev_us":%.1f,"non_2xx":%d,"statuses":{%s},'
         .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d}}\n',
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(75), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9), latency:percentile(99.99),
      latency.max, latency.mean, latency.stdev, non_2xx, table.concat(parts, ","),
      e.connect, e.read, e.write, e.timeout))
end

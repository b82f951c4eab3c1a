-- Replays pre-signed webhook requests (one per line: method, path, authorization, body; tab-separated).
-- JWTs cannot be made in wrk's Lua, so bench/webhooks.py signs a pool of requests just before the run.
-- No response() callback: wrk counts non-2xx answers itself (errors.status), and a Lua callback on every
-- response makes wrk hand each one's headers to Lua, CPU taken from the server on a 2-core machine.
-- Each request is signed once (the server refuses a replay): with several threads each takes its own share.
local requests = {}
local index = 0
local threads = 0

function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

function init(args)
  local share, shares, n = tonumber(id or 0), tonumber(args[2] or 1), 0
  for line in io.lines(args[1]) do
    n = n + 1
    if n % shares ~= share then goto continue end
    local method, path, auth, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = { ["Authorization"] = "Bearer " .. auth }
    if method == "POST" then
      headers["Content-Type"] = "application/json"
    else
      body = nil
    end
    requests[#requests + 1] = wrk.format(method, path, headers, body)
    ::continue::
  end
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d duration_us=%d errors_status=%d errors_connect=%d errors_timeout=%d\n",
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect, summary.errors.timeout))
  io.write(string.format("RESULT p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

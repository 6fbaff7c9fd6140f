-- wrk script for benches/load/soak.sh: paces each connection to one
-- request every PACE_US microseconds (env) plus its latency, so wrk -c N
-- offers about N * 1e6 / (PACE_US + latency) requests a second; soak.sh
-- corrects PACE_US from each segment's achieved rate. wrk takes whole
-- milliseconds from delay(), so the fraction is carried from one call to
-- the next and the mean pause is exact. Prints report.lua's RESULT line.
local pace_ms = tonumber(os.getenv("PACE_US") or "0") / 1000
local carried = 0

delay = function()
  carried = carried + pace_ms
  local whole = math.floor(carried)
  carried = carried - whole
  return whole
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    e.status, e.connect + e.read + e.write + e.timeout, summary.requests))
end

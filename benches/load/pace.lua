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

-- report.lua's done(), from beside this file, whatever wrk's directory.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "report.lua")

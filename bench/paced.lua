-- wrk: the latency runs, at a fixed offered load. Each connection waits PACE_MS before its next
-- request, so neither side is saturated and its latency is its own, not the queue's.
local pace = tonumber(os.getenv("PACE_MS") or "0")
function delay()
  return pace
end

-- wrk: POST an order; with IDEMPOTENT set, each request carries a fresh Idempotency-Key.
wrk.method = "POST"
wrk.body = '{"sku": "BENCH-1", "quantity": 1}'
wrk.headers["Content-Type"] = "application/json"
local counter = 0
-- wrk's LuaJIT seeds math.random the same way every run: the run's own id keeps keys unique.
local prefix = os.getenv("RUN_ID") or "run"
request = function()
  counter = counter + 1
  if os.getenv("IDEMPOTENT") == "1" then
    wrk.headers["Idempotency-Key"] = prefix .. "-" .. counter
  end
  return wrk.format()
end
-- With PACE_MS set (the latency runs), each connection waits that long before its next request.
local pace = tonumber(os.getenv("PACE_MS") or "")
if pace then
  delay = function()
    return pace
  end
end

-- wrk: GET each of PATHS (comma-separated) in turn, so one run mixes routes.
local paths = {}
for path in string.gmatch(os.getenv("PATHS") or "/ping", "[^,]+") do
  paths[#paths + 1] = path
end
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", paths[(counter % #paths) + 1])
end

-- wrk script: valid ~3.8 kB registrations for POST /v1/registrations, a new citizen per
-- request (PESEL with its check digit; birth dates in 1970, 3.36 million distinct citizens per
-- thread). Start the edge with REG_RATE_PER_ADDRESS=0 and REG_RATE_PER_CITIZEN=0, then:
--   wrk -t1 -c256 -d10s -s deploy/benchmarks/wrk/registrations.lua http://127.0.0.1:8080
-- docs/write-path.md compares the edge and a bare ntex handler with it.
-- Optional arguments after `--`: the slot (region, location, date) and `phone`, which adds a
-- phone number (each decision is then sent by e-mail and text), e.g.
--   wrk ... -s registrations.lua URL -- mazowieckie warszawa-narodowy 2027-02-05 phone
counter = 0
local weights = {1,3,7,9,1,3,7,9,1,3}
local function pesel(yy, mm, dd, serial)
  local s = string.format("%02d%02d%02d%04d", yy, mm, dd, serial)
  local sum = 0
  for i = 1, 10 do sum = sum + tonumber(s:sub(i,i)) * weights[i] end
  return s .. tostring((10 - sum % 10) % 10)
end
local answer = string.rep("x", 400)
local attrs = {}
for q = 0, 7 do attrs[#attrs+1] = string.format('"answer_%d":"%s"', q, answer) end
local attributes = "{" .. table.concat(attrs, ",") .. "}"
function setup(thread) thread:set("id", math.random(0, 50)) end
local region, location, date, phone = "mazowieckie", "narodowy", "2027-03-01", false
function init(args)
  counter = id * 1000000
  region = args[1] or region
  location = args[2] or location
  date = args[3] or date
  phone = args[4] == "phone"
end
request = function()
  counter = counter + 1
  local day = counter % 28 + 1
  local month = math.floor(counter / 28) % 12 + 1
  local serial = math.floor(counter / 336) % 10000
  local contact = string.format('"email":"c%d@example.pl"', counter)
  if phone then contact = contact .. string.format(',"phone":"+48%09d"', 600000000 + counter % 100000000) end
  local body = string.format('{"national_id":"%s","full_name":"Obywatel %d","birth_date":"19%02d-%02d-%02d",%s,"region":"%s","location":"%s","date":"%s","attributes":%s,"language":"pl"}',
    pesel(70, month, day, serial), counter, 70, month, day, contact, region, location, date, attributes)
  return wrk.format("POST", "/v1/registrations", {["Content-Type"]="application/json"}, body)
end
-- One machine-readable line at the end (deploy/bench reads it): requests answered, those with
-- a status other than 2xx/3xx, socket errors, the run's microseconds, latency percentiles in
-- microseconds.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_SUMMARY {"requests":%d,"non_2xx":%d,"socket_errors":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end

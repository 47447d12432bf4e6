-- Atomic compare-and-set of one client's record: store it only when it is
-- newer than what is held. Client times are compared exactly as integer
-- nanoseconds written in canonical decimal (no leading zeros): longer is
-- larger, equal lengths compare bytewise. Lua numbers are doubles and would
-- lose nanoseconds, so they are never used for times.
--
-- KEYS[1] client hash   <prefix>client:<id>
-- KEYS[2] GEO set       <prefix>geo
-- ARGV    ns, at, server, skew, location, lat, lon, time, client_id,
--         geo_lon, geo_lat ("" when the latitude is outside Redis GEO's band),
--         tie_break ("1": on equal times the bytewise larger AT line wins,
--         so every node settles on the same record; "0": equal is not newer)
-- Returns 1 when stored, 0 when the held record is newer or equal.

local function compare_bytes(a, b)
  if a == b then return 0 end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return (x > y) and 1 or -1 end
  end
  return (#a > #b) and 1 or -1
end

local function compare_ns(a, b)
  if #a ~= #b then return (#a > #b) and 1 or -1 end
  return compare_bytes(a, b)
end

local ns, at = ARGV[1], ARGV[2]
local held = redis.call('HMGET', KEYS[1], 'ns', 'at')
if held[1] then
  local order = compare_ns(ns, held[1])
  if order < 0 then return 0 end
  if order == 0 and (ARGV[12] ~= '1' or compare_bytes(at, held[2]) <= 0) then
    return 0
  end
end

redis.call('HSET', KEYS[1], 'at', at, 'server', ARGV[3], 'skew', ARGV[4],
           'location', ARGV[5], 'lat', ARGV[6], 'lon', ARGV[7], 'time', ARGV[8],
           'ns', ns)
if ARGV[10] ~= '' then
  redis.call('GEOADD', KEYS[2], ARGV[10], ARGV[11], ARGV[9])
else
  redis.call('ZREM', KEYS[2], ARGV[9])
end
return 1

-- Atomic compare-and-set of one client's record: store it only when it is
-- newer than what is held, and log it for reconciliation.
--
-- Client times are compared exactly as integer nanoseconds written in
-- canonical decimal (no leading zeros): longer is larger, equal lengths
-- compare bytewise. Lua numbers are doubles and would lose nanoseconds, so
-- they are never used for times.
--
-- KEYS[1] client hash            <prefix>client:<id>
-- KEYS[2] GEO set                <prefix>geo
-- KEYS[3] update log (stream)    <prefix>log
-- KEYS[4] log epoch              <prefix>log:epoch (made here on first use)
-- KEYS[5] peer offset hash       <prefix>peer:<name>   (used only with a chain)
-- KEYS[6] summary hash           <prefix>summary: clients (count), digest (XOR
--         over clients of the first 64 bits of SHA-1(AT line)): two nodes
--         hold the same records exactly when their summaries are equal (up to
--         hash collisions), so `herd status` compares nodes in O(1)
-- ARGV[1..9]  ns, at, server, skew, location, lat, lon, time, client_id
-- ARGV[10,11] geo_lon, geo_lat ("" when the latitude is outside Redis GEO's band)
-- ARGV[12]    tie_break: "1": on equal times the bytewise larger AT line wins,
--             so every node settles on the same record; "0": equal is not newer
-- ARGV[13]    log length bound (approximate MAXLEN)
-- ARGV[14..16] chain: peer epoch, prev position, position ("" when none). The
--             peer offset advances to `position` only when it stands at `prev`
--             in the same epoch: it then says "every update of that peer's log
--             up to position is applied here".
-- Returns {stored (1/0), "<epoch>/<log id>" of this update or "", offset advanced (1/0)}.

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

local function is_newer(ns, at, held)
  if not held[1] then return true end
  local order = compare_ns(ns, held[1])
  if order ~= 0 then return order > 0 end
  return ARGV[12] == '1' and compare_bytes(at, held[2]) > 0
end

local function xor64(a, b)  -- two 16-hex-digit strings
  local hi = bit.bxor(tonumber(string.sub(a, 1, 8), 16), tonumber(string.sub(b, 1, 8), 16))
  local lo = bit.bxor(tonumber(string.sub(a, 9, 16), 16), tonumber(string.sub(b, 9, 16), 16))
  return bit.tohex(hi, 8) .. bit.tohex(lo, 8)
end

local function update_summary(old_at, new_at)
  local digest = redis.call('HGET', KEYS[6], 'digest') or '0000000000000000'
  digest = xor64(digest, string.sub(redis.sha1hex(new_at), 1, 16))
  if old_at then
    digest = xor64(digest, string.sub(redis.sha1hex(old_at), 1, 16))
  else
    redis.call('HINCRBY', KEYS[6], 'clients', 1)
  end
  redis.call('HSET', KEYS[6], 'digest', digest)
end

local function advance_offset()
  if ARGV[14] == '' then return 0 end
  local cur = redis.call('HMGET', KEYS[5], 'epoch', 'pos')
  if cur[1] ~= ARGV[14] or cur[2] ~= ARGV[15] then return 0 end
  redis.call('HSET', KEYS[5], 'pos', ARGV[16])
  return 1
end

local ns, at, id = ARGV[1], ARGV[2], ARGV[9]
local advanced = advance_offset()
local held = redis.call('HMGET', KEYS[1], 'ns', 'at')
if not is_newer(ns, at, held) then
  return {0, '', advanced}
end
update_summary(held[2], at)

redis.call('HSET', KEYS[1], 'at', at, 'server', ARGV[3], 'skew', ARGV[4],
           'location', ARGV[5], 'lat', ARGV[6], 'lon', ARGV[7], 'time', ARGV[8],
           'ns', ns)
if ARGV[10] ~= '' then
  redis.call('GEOADD', KEYS[2], ARGV[10], ARGV[11], id)
else
  redis.call('ZREM', KEYS[2], id)
end
local epoch = redis.call('GET', KEYS[4])
if not epoch then
  -- A new log: name it by the time it began, so positions in a log that was
  -- lost with its Redis are never mistaken for positions in this one.
  local now = redis.call('TIME')
  epoch = now[1] .. '.' .. now[2]
  redis.call('SET', KEYS[4], epoch)
end
local log_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[13], '*', 'c', id)
return {1, epoch .. '/' .. log_id, advanced}

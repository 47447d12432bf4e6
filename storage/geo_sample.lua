-- A sample of at most ARGV[1] clients of the GEO set, for the admin web
-- page's map (storage.store.RedisStore.sample_positions).
-- KEYS[1] GEO set (<prefix>geo; member = client id, score = 52-bit geohash)
-- ARGV    count, block
-- Returns {total, id, score, id, score, ...}: total is the number of clients
-- in the set. Members are taken in blocks of `block` consecutive ones, the
-- blocks spread evenly along the set's order (by geohash): a sample spread
-- over the world in proportion to where the clients are, the same from one
-- call to the next while the clients stay put (a map redrawn every 2 s does
-- not flicker), at count/block ZRANGE calls of O(log(total)) each.
local total = redis.call('ZCARD', KEYS[1])
local count = math.min(tonumber(ARGV[1]), total)
local block = tonumber(ARGV[2])
local out = {total}
if count <= 0 then
  return out
end
local blocks = math.ceil(count / block)
local taken = 0
for i = 0, blocks - 1 do
  local first = math.floor(i * total / blocks)
  local after = math.floor((i + 1) * total / blocks)
  local n = math.min(block, after - first, count - taken)
  if n > 0 then
    local members = redis.call('ZRANGE', KEYS[1], first, first + n - 1, 'WITHSCORES')
    for j = 1, #members do
      out[#out + 1] = members[j]
    end
    taken = taken + #members / 2
  end
end
return out

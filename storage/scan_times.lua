-- Every client's id and client-time, one SCAN step at a time (a node reads
-- them at start to know, without asking Redis, what is newer; herd.latest).
-- ARGV  cursor, key pattern (<prefix>client:*), count hint, key prefix length
-- Returns {next cursor, id, time, id, time, ...}; complete at cursor "0".
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3], 'TYPE', 'hash')
local out = {step[1]}
local skip = tonumber(ARGV[4]) + 1
for _, key in ipairs(step[2]) do
  local time = redis.call('HGET', key, 'time')
  if time then
    out[#out + 1] = string.sub(key, skip)
    out[#out + 1] = time
  end
end
return out

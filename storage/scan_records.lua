-- Every client's AT line, one SCAN step at a time (full reconciliation and
-- `herd check`).
-- ARGV  cursor, key pattern (<prefix>client:*), count hint
-- Returns {next cursor, at, at, ...}; the scan is complete when the cursor is "0".
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3], 'TYPE', 'hash')
local out = {step[1]}
for _, key in ipairs(step[2]) do
  local at = redis.call('HGET', key, 'at')
  if at then out[#out + 1] = at end
end
return out

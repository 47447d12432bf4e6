-- Every client's whole stored state, one SCAN step at a time (`herd check`).
-- KEYS[1] GEO set (<prefix>geo)
-- ARGV    cursor, key pattern (<prefix>client:*), count hint, prefix length of a client key
-- Returns {next cursor, id, at, rest, id, at, rest, ...}: rest is every field
-- of the client's hash (sorted, "field=value" joined by "\n") and its GEO
-- score ("geo=" when it is not in the GEO set). The scan is complete when the
-- cursor is "0".
local step = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', ARGV[3], 'TYPE', 'hash')
local skip = tonumber(ARGV[4])
local out = {step[1]}
for _, key in ipairs(step[2]) do
  local id = string.sub(key, skip + 1)
  local flat = redis.call('HGETALL', key)
  local fields = {}
  for i = 1, #flat, 2 do fields[#fields + 1] = flat[i] .. '=' .. flat[i + 1] end
  table.sort(fields)
  fields[#fields + 1] = 'geo=' .. (redis.call('ZSCORE', KEYS[1], id) or '')
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', key, 'at') or ''
  out[#out + 1] = table.concat(fields, '\n')
end
return out

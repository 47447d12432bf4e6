-- Reconciliation, sending side: the current records of the clients updated
-- in this node's log after a peer's position, one chunk at a time.
--
-- KEYS[1] update log (stream)  <prefix>log
-- KEYS[2] log epoch            <prefix>log:epoch
-- ARGV    peer's epoch, peer's position ("-": none), chunk size, client key
--         prefix, the peer's name (entries that came from it are left out;
--         "": none left out)
-- Returns {"ok", last id, entries read, at, at, ...} with the records of the
-- next chunk of entries after the position (last id = the position itself
-- when none; each client once per chunk), or
-- {"reset"} when the position cannot be served incrementally: another epoch
-- (this node's Redis was replaced), no position, or entries after it were
-- trimmed away.
local epoch = redis.call('GET', KEYS[2])
local pos = ARGV[2]
if pos == '-' or epoch ~= ARGV[1] then
  return {'reset'}
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  if pos == '0-0' then return {'ok', pos, 0} end
  return {'reset'}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local deleted = '0-0'
for i = 1, #info, 2 do
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
if id_less(pos, deleted) then
  return {'reset'}
end
local entries = redis.call('XRANGE', KEYS[1], '(' .. pos, '+', 'COUNT', ARGV[3])
local out = {'ok', pos, #entries}
local seen = {}
for _, entry in ipairs(entries) do
  out[2] = entry[1]
  local client, source = entry[2][2], entry[2][4]
  if (ARGV[5] == '' or source ~= ARGV[5]) and not seen[client] then
    seen[client] = true
    local at = redis.call('HGET', ARGV[4] .. client, 'at')
    if at then out[#out + 1] = at end
  end
end
return out

-- Reconciliation, sending side: the current records of the clients updated
-- in this node's journal after a peer's position, one chunk at a time.
--
-- KEYS[1] journal (list)   <prefix>journal: "<client id>" or "<client id>\t<source>"
-- KEYS[2] journal epoch    <prefix>journal:epoch
-- KEYS[3] journal base     <prefix>journal:base (elements trimmed from its head)
-- ARGV    peer's epoch, peer's position ("-": none), chunk size, client key
--         prefix, the peer's name (entries that came from it are left out;
--         "": none left out)
-- Position "0-<k>": the first k elements ever appended (the element at list
-- index i is number base + i + 1).
-- Returns {"ok", last position, entries read, at, at, ...} with the records
-- of the next chunk of entries after the position (last position = the
-- position itself when none; each client once per chunk), or
-- {"reset"} when the position cannot be served incrementally: another epoch
-- (this node's Redis was replaced, or it kept the stream log of a version
-- before the journal), no position, beyond the journal's end, or entries
-- after it trimmed away.
local call = redis.call
local epoch = call('GET', KEYS[2])
local pos = ARGV[2]
if pos == '-' or epoch ~= ARGV[1] then
  return {'reset'}
end
local k = tonumber(string.match(pos, '^0%-(%d+)$'))
if not k then return {'reset'} end
local base = tonumber(call('GET', KEYS[3])) or 0
if k < base or k > base + call('LLEN', KEYS[1]) then
  return {'reset'}
end
local from = k - base
local entries = call('LRANGE', KEYS[1], from, from + tonumber(ARGV[3]) - 1)
local out = {'ok', pos, #entries}
if #entries > 0 then out[2] = string.format('0-%.0f', k + #entries) end
local seen, leave_out, find, sub = {}, ARGV[5], string.find, string.sub
for i = 1, #entries do
  local client, source = entries[i], ''
  local tab = find(client, '\t', 1, true)
  if tab then client, source = sub(client, 1, tab - 1), sub(client, tab + 1) end
  if (leave_out == '' or source ~= leave_out) and not seen[client] then
    seen[client] = true
    local at = call('HGET', ARGV[4] .. client, 'at')
    if at then out[#out + 1] = at end
  end
end
return out

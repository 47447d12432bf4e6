-- Where this node's journal stands now: {epoch, last position} ("0-0" when
-- nothing was ever appended). Makes the epoch on first use, as
-- store_batch.lua does.
-- KEYS[1] journal (list)   <prefix>journal
-- KEYS[2] journal epoch    <prefix>journal:epoch
-- KEYS[3] journal base     <prefix>journal:base (elements trimmed from its head)
local call = redis.call
local epoch = call('GET', KEYS[2])
if not epoch then
  local now = call('TIME')
  epoch = now[1] .. '.' .. now[2]
  call('SET', KEYS[2], epoch)
end
local base = tonumber(call('GET', KEYS[3])) or 0
return {epoch, string.format('0-%.0f', base + call('LLEN', KEYS[1]))}

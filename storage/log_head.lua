-- Where this node's update log stands now: {epoch, last id} ("0-0" when the
-- log is empty). Makes the epoch on first use, as store_if_newer.lua does.
-- KEYS[1] update log (stream)  <prefix>log
-- KEYS[2] log epoch            <prefix>log:epoch
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  local now = redis.call('TIME')
  epoch = now[1] .. '.' .. now[2]
  redis.call('SET', KEYS[2], epoch)
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  return {epoch, '0-0'}
end
return {epoch, last[1][1]}

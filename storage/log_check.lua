-- Whether this node's journal is still the one the node wrote, read once a
-- second and whenever Redis serves again (storage.store.RedisStore.check_log).
-- KEYS[1] journal (list)   <prefix>journal
-- KEYS[2] journal epoch    <prefix>journal:epoch
-- KEYS[3] journal base     <prefix>journal:base (elements trimmed from its head)
-- ARGV[1] the epoch the node last saw ("": none); ARGV[2] how many entries
-- it saw appended to it.
-- Returns {epoch (false: none), entries ever appended, "went back" 1|0}.
-- Fewer entries than the node saw, in the same epoch: the Redis was restored
-- from an older copy, or lost its last writes (appendfsync everysec). Its
-- epoch is deleted at once (the next store batch makes a new one), so the
-- positions written next are never taken for those peers already applied.
local call = redis.call
local epoch = call('GET', KEYS[2])
local top = (tonumber(call('GET', KEYS[3])) or 0) + call('LLEN', KEYS[1])
if epoch and epoch == ARGV[1] and top < tonumber(ARGV[2]) then
  call('DEL', KEYS[2])
  return {false, top, 1}
end
return {epoch or false, top, 0}

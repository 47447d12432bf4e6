-- The offline places data set in use, if it is whole: its GEO set and its
-- hash hold the same number of places, at least one. A data set with a key
-- deleted or emptied by hand counts as missing, so it is loaded again.
-- KEYS[1] <prefix>places:version
-- ARGV[1] key prefix
-- Returns the version, or nil.
local version = redis.call('GET', KEYS[1])
if not version then
  return false
end
local base = ARGV[1] .. 'places:' .. version
local places = redis.call('ZCARD', base .. ':geo')
if places == 0 or places ~= redis.call('HLEN', base .. ':info') then
  return false
end
return version

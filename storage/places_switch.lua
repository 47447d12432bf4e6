-- Make a freshly loaded offline places data set the one in use, atomically:
-- a reader sees the old data set or the new one, never half of one.
-- KEYS[1] <prefix>places:version
-- KEYS[2] the loaded GEO set   <prefix>places:<version>:geo:loading
-- KEYS[3] the loaded hash      <prefix>places:<version>:info:loading
-- ARGV[1] key prefix; ARGV[2] the version loaded
-- Renames them to <prefix>places:<version>:geo / :info (replacing a damaged
-- copy of the same version), sets the version, and unlinks the keys of the
-- version it replaces. Returns that old version ("" when there was none).
local prefix, version = ARGV[1], ARGV[2]
local old = redis.call('GET', KEYS[1])
redis.call('RENAME', KEYS[2], prefix .. 'places:' .. version .. ':geo')
redis.call('RENAME', KEYS[3], prefix .. 'places:' .. version .. ':info')
redis.call('SET', KEYS[1], version)
if old and old ~= version then
  redis.call('UNLINK', prefix .. 'places:' .. old .. ':geo', prefix .. 'places:' .. old .. ':info')
end
return old or ''

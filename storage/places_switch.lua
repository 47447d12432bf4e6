-- Make a freshly loaded offline places data set the one in use, atomically:
-- a reader sees the old data set or the new one, never half of one.
-- KEYS[1] <prefix>places:version
-- KEYS[2] the loaded GEO set   <prefix>places:<version>:geo:loading:<load>
-- KEYS[3] the loaded hash      <prefix>places:<version>:info:loading:<load>
-- ARGV[1] key prefix; ARGV[2] the version loaded; ARGV[3] how many places it has
-- Checks first that both hold every place (nothing is changed otherwise:
-- the load failed, or its keys expired), then renames them to
-- <prefix>places:<version>:geo / :info (replacing a damaged copy of the same
-- version, or what a concurrent load of it put there), drops their expiry,
-- sets the version, and unlinks the keys of the version it replaces.
-- Returns that old version ("" when there was none).
local prefix, version, places = ARGV[1], ARGV[2], tonumber(ARGV[3])
if redis.call('ZCARD', KEYS[2]) ~= places or redis.call('HLEN', KEYS[3]) ~= places then
  return redis.error_reply('ERR places load incomplete: ' .. KEYS[2] .. ' or ' .. KEYS[3] ..
                           ' does not hold ' .. ARGV[3] .. ' places')
end
local base = prefix .. 'places:' .. version
local old = redis.call('GET', KEYS[1])
redis.call('RENAME', KEYS[2], base .. ':geo')
redis.call('RENAME', KEYS[3], base .. ':info')
redis.call('PERSIST', base .. ':geo')
redis.call('PERSIST', base .. ':info')
redis.call('SET', KEYS[1], version)
if old and old ~= version then
  redis.call('UNLINK', prefix .. 'places:' .. old .. ':geo', prefix .. 'places:' .. old .. ':info')
end
return old or ''

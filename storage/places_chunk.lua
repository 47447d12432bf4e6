-- One chunk of an offline places load, written whole with its keys' expiry:
-- a load that dies between two chunks leaves keys that expire, never a key
-- without one (as separate GEOADD, HSET and PEXPIRE commands could).
-- KEYS[1] the loading GEO set  <prefix>places:<version>:geo:loading:<load>
-- KEYS[2] the loading hash     <prefix>places:<version>:info:loading:<load>
-- ARGV[1] the keys' time to live, in ms, from now
-- ARGV[2..] per place four arguments: id, lon, lat, its result JSON
-- Returns the number of places in the chunk.

-- Arguments per unpack(): Lua's C stack takes at most about 8,000; a multiple
-- of 3 (GEOADD's lon, lat, member) and of 2 (HSET's field, value).
local SLICE = 3000

local function call_in_slices(command, key, args)
  for first = 1, #args, SLICE do
    redis.call(command, key, unpack(args, first, math.min(first + SLICE - 1, #args)))
  end
end

local geo, info = {}, {}
for i = 2, #ARGV, 4 do
  local id, lon, lat, doc = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  geo[#geo + 1], geo[#geo + 2], geo[#geo + 3] = lon, lat, id
  info[#info + 1], info[#info + 2] = id, doc
end
call_in_slices('GEOADD', KEYS[1], geo)
call_in_slices('HSET', KEYS[2], info)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return #info / 2

-- Offline places near a point, nearest first, in one round trip, from the
-- data set in use (whichever version <prefix>places:version names).
-- KEYS[1] <prefix>places:version
-- ARGV    key prefix, lon, lat, radius in metres, count
-- Data set keys: <prefix>places:<version>:geo  GEO set, member = place id
--                <prefix>places:<version>:info hash, field = place id,
--                                              value = result JSON
-- Returns {} when no data set is there (Redis emptied or replaced: the node
-- loads it again), else the version followed by the result JSON of each
-- place found (possibly none).
local version = redis.call('GET', KEYS[1])
if not version then
  return {}
end
local base = ARGV[1] .. 'places:' .. version
if redis.call('EXISTS', base .. ':geo', base .. ':info') ~= 2 then
  return {}
end
local ids = redis.call('GEOSEARCH', base .. ':geo', 'FROMLONLAT', ARGV[2], ARGV[3],
                       'BYRADIUS', ARGV[4], 'm', 'ASC', 'COUNT', ARGV[5])
if #ids == 0 then
  return {version}
end
local docs = redis.call('HMGET', base .. ':info', unpack(ids))
table.insert(docs, 1, version)
return docs

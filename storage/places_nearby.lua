-- Offline places near a point, nearest first, in one round trip.
-- KEYS[1] GEO set of places   <prefix>places:<version>:geo  (member = place id)
-- KEYS[2] hash of places      <prefix>places:<version>:info (field = place id,
--                                                          value = result JSON)
-- ARGV    lon, lat, radius in metres, count
-- Returns the result JSON of each place found (possibly none).
local ids = redis.call('GEOSEARCH', KEYS[1], 'FROMLONLAT', ARGV[1], ARGV[2],
                       'BYRADIUS', ARGV[3], 'm', 'ASC', 'COUNT', ARGV[4])
if #ids == 0 then
  return {}
end
return redis.call('HMGET', KEYS[2], unpack(ids))

#!lua name=herd_store
-- A Redis function library (Redis 7.0 or later) of one function,
-- herd_store_batch: the atomic compare-and-set of a batch of client records,
-- in order: each record is stored only when it is newer than what is held,
-- and logged for reconciliation. One call per batch keeps Redis round trips
-- (and, with appendfsync always, fsyncs) per batch, not per update.
--
-- The node loads it (FUNCTION LOAD) under names that tell its version
-- (storage.redis_client.FunctionCall): library herd_store_<v>, function
-- herd_store_batch_<v>, <v> the first 12 hex digits of this file's SHA-1, so
-- nodes of different versions sharing one Redis each call their own, and
-- calls it with FCALL. A library's code runs once, when it is loaded: the
-- functions and constants below are made once, not at every call as in an
-- EVAL script (that was 12% of a one-record call's instructions). At load
-- time Redis 7.0 lets a library reach only redis.register_function, so the
-- functions of Redis and Lua used below are looked up at the first call.
-- KEYS and ARGV below are the call's keys and arguments, named as in an EVAL
-- script.
--
-- Client times are compared exactly as integer nanoseconds written in
-- canonical decimal (no leading zeros): longer is larger, equal lengths
-- compare bytewise. Lua numbers are doubles and would lose nanoseconds, so
-- they are never used for times.
--
-- KEYS[1] GEO set                <prefix>geo
-- KEYS[2] journal (list)         <prefix>journal: the update log, one element
--         per stored record, "<client id>" or "<client id>\t<source>"; the
--         k-th element ever appended is at position "0-<k>"
-- KEYS[3] journal epoch          <prefix>journal:epoch (made here on first use)
-- KEYS[4] summary hash           <prefix>summary: clients (count), digest (XOR
--         over clients of the first 64 bits of SHA-1(AT line)): two nodes
--         hold the same records exactly when their summaries are equal (up to
--         hash collisions), so `herd status` compares nodes in O(1)
-- KEYS[5] journal base           <prefix>journal:base: elements trimmed from
--         the journal's head so far (absent: none)
-- KEYS[6] batch mark             <prefix>journal:batch: the name of the last batch
--         applied whose predecessor (ARGV[5]) was applied too; "-" when not
-- Per-client and per-peer keys are derived from the prefix (standalone Redis):
--         <prefix>client:<id> (hash), <prefix>peer:<name> (offset hash)
-- ARGV[1] key prefix; ARGV[2] journal length bound (it may exceed it by a
-- tenth before its oldest elements are trimmed in one go); ARGV[3]
-- the records, one argument for the whole batch (the node's Redis client
-- encodes arguments one by one, in Python; a gmatch here splits them in C);
-- ARGV[4] the batch's digest part: the XOR of the parts of the summary digest
-- (the first 64 bits of SHA-1 of the AT line) of its records of kind "0" or
-- "1" (below), 16 hex digits. The node computes it, in C and once per batch,
-- for records it knows newer than what this Redis holds (herd.latest): that
-- costs less than a redis.sha1hex and a XOR per record here. The script
-- hashes only the other records it stores, those of kind "0" or "1" it does
-- not store (none, unless this Redis was changed by another hand), and the
-- records replaced.
-- ARGV[5] the name of the batch the node sent before this one ("": none, the
-- chain starting again once the node knows the outcome of every batch it sent
-- before); ARGV[6] this batch's name; ARGV[7] the journal as the node last
-- saw it, "<epoch> <entries ever appended>" ("": not known): when it holds
-- fewer entries in that same epoch, this Redis went back (restored from an
-- older copy, or it lost its last writes), and its epoch is deleted before
-- this batch appends anything, so the batch begins a new log and no position
-- a peer may have applied is written again (storage/log_check.lua does the
-- same once a second for a node that stores nothing).
-- Log steps are taken only when KEYS[6]
-- holds ARGV[5] (or ARGV[5] is ""): a batch sent before the node learnt that an
-- earlier one failed (an error reply, its reply lost) may step over a record
-- that failed with it. The node takes steps again once it knows what was lost
-- (docs/PEER-PROTOCOL.md 5.3).
-- No field holds a newline or a tab (only the source a space): each is
-- followed by a newline, a record ends with a tab. Per record:
--   server, skew, client id, lat, lon, client-time: the AT record's fields as
--                    the node made or validated them; the AT line ("AT <server>
--                    <skew> <client-id> <lat><lon> <client-time>") is built from
--                    them here (the location is <lat><lon>),
--   kind             "0" or "1": its digest part is in ARGV[4]; "2" or "3": it is
--                    not. "1" or "3": on equal times the bytewise larger AT line
--                    wins (tie-break), so every node settles on the same record;
--                    "0" or "2": equal is not newer,
--   source           the peer the record came from ("" from a client; "<peer> F"
--                    when forwarded before that peer stored it: the one field
--                    with a space), logged so that a SYNC answer to that peer
--                    can leave it out,
--   chain            nothing (no field, no newline: a client's record is matched
--                    with four captures less), or these, each followed by a
--                    newline:
--     chain peer, chain epoch, chain prev, chain pos: the peer's
--                    offset advances to pos only when it stands at prev in the
--                    same epoch (prev "*": whatever it stands at); it then says
--                    "every update of that peer's log up to pos is applied here".
-- A record with an empty server only advances the chain (a peer saying "my
-- log moved on to pos with updates that came from you").
-- Positions: a client whose latitude is beyond +-85.05112878 (Redis GEO's
-- limit), compared exactly as decimal text, is kept out of the GEO set (its
-- hash is complete); Redis itself would round the number to a double first
-- and index +85.0511287800000000000001.
-- Returns one string: a line "<epoch> 0-<k>", k the number of journal
-- elements ever appended before this batch (the position before its first
-- stored record; the line is empty when nothing was stored), then per record
-- a line "<advanced 1|0>", followed by "+" when the record was stored: the
-- stored records are the batch's elements, at positions 0-<k+1>, 0-<k+2>, ...
-- in order (the node writes them out: formatting a number costs Lua far more
-- than the node). A stored record's previous entry is the one stored before
-- it in the batch, which lets the node notice journal elements it never
-- heard about (a reply lost with its Redis connection).

-- Arguments per unpack(): Lua's C stack takes at most about 8,000 (a batch may
-- hold more records than MAX_BATCH: a group is never split), so long lists go
-- to Redis in slices, in order. A multiple of 3: GEOADD's lon, lat, member.
local SLICE = 3000
local call, match, sub, find, byte, sha1hex, bxor  -- Redis's and Lua's: set at the first call

-- Constants written out: a string.rep or a concatenation would run on every call.
local PAD = {[0] = '', '0', '00', '000', '0000', '00000', '000000', '0000000', '00000000', '000000000'}

local function canonical_ns(time)  -- "12.5" -> "12500000000"; no leading zeros
  local seconds, fraction = match(time, '^(%d+)%.?(%d*)$')
  local ns = seconds .. fraction .. PAD[9 - #fraction]
  local first = find(ns, '[1-9]')
  if not first then return '0' end
  return first == 1 and ns or sub(ns, first)
end

local function compare_bytes(a, b)
  if a == b then return 0 end
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = byte(a, i), byte(b, i)
    if x ~= y then return (x > y) and 1 or -1 end
  end
  return (#a > #b) and 1 or -1
end

local function compare_ns(a, b)
  if #a ~= #b then return (#a > #b) and 1 or -1 end
  return compare_bytes(a, b)
end

-- Client-times as sent ("12.5", "0012.50"), compared exactly. strtod rounds correctly and rounding keeps
-- order, so different doubles decide at once (two C calls); only the same
-- double (equal instants, or ones nanoseconds apart) takes the exact way.
local function compare_times(a, b)
  local x, y = tonumber(a), tonumber(b)
  if x ~= y and x and y then return (x > y) and 1 or -1 end
  return compare_ns(canonical_ns(a), canonical_ns(b))
end

local TIE_BREAK = {['1'] = true, ['3'] = true}
local IN_ARGV_DIGEST = {['0'] = true, ['1'] = true}

local function is_newer(time, at, kind, held_time, held_at)
  local order = compare_times(time, held_time)
  if order ~= 0 then return order > 0 end
  return TIE_BREAK[kind] and compare_bytes(at, held_at) > 0
end

-- What the batch changes in the digest, as two 32-bit halves: ARGV[4], with
-- the parts of the records stored that it lacks, without those of the records
-- in it not stored, and without the parts of the records replaced. XORed into
-- the summary once, at the end, when anything was stored.
local KEYS, ARGV, prefix, change_hi, change_lo  -- the call's (set by store_batch)
local function xor_part(at)  -- in or out: the same
  local sha = sha1hex(at)
  change_hi = bxor(change_hi, tonumber(sub(sha, 1, 8), 16))
  change_lo = bxor(change_lo, tonumber(sub(sha, 9, 16), 16))
end

local function write_digest(added)
  local held = call('HGET', KEYS[4], 'digest') or '0000000000000000'
  local hi = bxor(tonumber(sub(held, 1, 8), 16), change_hi)
  local lo = bxor(tonumber(sub(held, 9, 16), 16), change_lo)
  call('HSET', KEYS[4], 'digest', bit.tohex(hi, 8) .. bit.tohex(lo, 8))
  if added > 0 then call('HINCRBY', KEYS[4], 'clients', added) end
end

local function forget_a_log_gone_back(top)  -- (see ARGV[7])
  local seen_epoch, seen_top = match(ARGV[7], '^(%S+) (%d+)$')
  if seen_epoch and top < tonumber(seen_top) and call('GET', KEYS[3]) == seen_epoch then
    call('DEL', KEYS[3])
  end
end

local epoch
local function log_epoch()
  if epoch then return epoch end
  epoch = call('GET', KEYS[3])
  if not epoch then
    -- A new log: name it by the time it began, so positions in a log that was
    -- lost with its Redis are never mistaken for positions in this one.
    local now = call('TIME')
    epoch = now[1] .. '.' .. now[2]
    call('SET', KEYS[3], epoch)
  end
  return epoch
end

-- The journal: this batch's elements, pushed with one RPUSH at the end (one
-- command per batch instead of an XADD per record). Elements leave it only
-- from its head (LTRIM), counted in the base, so base + length is the number
-- of elements ever appended: the last position.
local function journal_top()
  return (tonumber(call('GET', KEYS[5])) or 0) + call('LLEN', KEYS[2])
end

local function write_journal(journal, n_journal)
  local length
  for first = 1, n_journal, SLICE do
    length = call('RPUSH', KEYS[2], unpack(journal, first, math.min(first + SLICE - 1, n_journal)))
  end
  local bound = tonumber(ARGV[2])
  local excess = length - bound
  if excess > bound / 10 then  -- amortised: trimmed once per tenth of the bound
    call('LTRIM', KEYS[2], excess, -1)
    call('INCRBY', KEYS[5], excess)
  end
end

local function advance_offset(peer, chain_epoch, prev, pos)
  local key = prefix .. 'peer:' .. peer
  if prev == '*' then  -- a SYNC answer ends here: the offset is pos, whatever it was
    call('HSET', key, 'epoch', chain_epoch, 'pos', pos)
    return 1
  end
  local cur = call('HMGET', key, 'epoch', 'pos')
  if cur[1] ~= chain_epoch or cur[2] ~= prev then return 0 end
  call('HSET', key, 'pos', pos)
  return 1
end

local GEO_LAT_WHOLE, GEO_LAT_FRACTION = 85, '05112878'

local function geo_latitude(lat)  -- |lat| <= 85.05112878 exactly ("+85.0500", "-007.5")
  -- "+D." or "+DD." below 85 is well inside the band: told by three bytes
  -- (46 '.', 48 '0', 53 '5', 56 '8', 57 '9'), cheaper than tonumber's strtod.
  local a, b, c = byte(lat, 2, 4)
  if b == 46 then
    if a >= 48 and a <= 57 then return true end
  elseif c == 46 and a >= 48 and b >= 48 and b <= 57 and (a < 56 or (a == 56 and b < 53)) then
    return true
  end
  local whole, fraction = match(lat, '^[+-](%d+)%.?(%d*)$')
  if not whole then return true end  -- not the AT line grammar: GEOADD decides
  whole = tonumber(whole)
  if whole ~= GEO_LAT_WHOLE then return whole < GEO_LAT_WHOLE end
  local limit = GEO_LAT_FRACTION
  if #fraction < #limit then
    fraction = fraction .. string.rep('0', #limit - #fraction)
  else
    limit = limit .. string.rep('0', #fraction - #limit)
  end
  return fraction <= limit  -- equal lengths of digits: text order is number order
end

-- The GEO set is written once per batch: one GEOADD of every position in
-- the batch's order (of a client's positions the last wins, in Redis as in the
-- hash), then one ZREM of the clients whose last position is beyond Redis
-- GEO's latitudes. Arrays, not tables by client: one command instead of one
-- per record, and no hashing of client ids in Lua.
-- add: lon, lat, id of each position in order (n_add elements); beyond:
-- client id -> true, made on first use.

local function add_one_by_one(add, n_add, beyond)
  -- A position GEOADD refuses (not the AT line grammar): each on its own; a
  -- client whose last position is refused is kept out of the set (returned).
  local last = {}
  for i = 1, n_add, 3 do last[add[i + 2]] = i end
  beyond = beyond or {}
  for i = 1, n_add, 3 do
    local id = add[i + 2]
    local one = redis.pcall('GEOADD', KEYS[1], add[i], add[i + 1], id)
    if type(one) == 'table' and one.err and last[id] == i then beyond[id] = true end
  end
  return beyond
end

local function write_places(add, n_add, beyond)
  local refused = false
  for first = 1, n_add, SLICE do  -- in order: a client's last position wins
    local added = redis.pcall('GEOADD', KEYS[1], unpack(add, first, math.min(first + SLICE - 1, n_add)))
    refused = refused or (type(added) == 'table' and added.err ~= nil)
  end
  if refused then beyond = add_one_by_one(add, n_add, beyond) end
  if beyond then
    local remove = {}
    for id in pairs(beyond) do remove[#remove + 1] = id end
    for first = 1, #remove, SLICE do
      call('ZREM', KEYS[1], unpack(remove, first, math.min(first + SLICE - 1, #remove)))
    end
  end
end

-- %S: not white space (cheaper for Lua's matcher than a set like [^\n\t]);
-- but a source may be "<peer> F". Seven fields, source, chain.
local RECORD = '(%S*)\n(%S*)\n(%S*)\n(%S*)\n(%S*)\n(%S*)\n(%S*)\n([^\n\t]*)\n([^\t]*)\t'
local CHAIN = '^(%S*)\n(%S*)\n(%S*)\n(%S*)\n$'

local steps_ok  -- (read on the first step)
local function may_step()
  if steps_ok == nil then steps_ok = ARGV[5] == '' or call('GET', KEYS[6]) == ARGV[5] end
  return steps_ok
end

-- A stored record's line: constant strings, no string made per record.
local STORED = {[0] = '0+', [1] = '1+', ['0'] = '0+'}

-- The call's state above (KEYS to steps_ok) is set afresh at each call;
-- Redis runs one call at a time. What each record touches is a local of the
-- call (a register), not the library's (an upvalue): the names below that
-- repeat the library's are copies of them.
local function store_batch(keys, args)
  if not call then
    call, match, sub, find, byte = redis.call, string.match, string.sub, string.find, string.byte
    sha1hex, bxor = redis.sha1hex, bit.bxor
  end
  KEYS, ARGV, prefix = keys, args, args[1]
  change_hi, change_lo = tonumber(sub(ARGV[4], 1, 8), 16) or 0, tonumber(sub(ARGV[4], 9, 16), 16) or 0
  epoch, steps_ok = nil, nil
  local call, match, geo_latitude, is_newer, xor_part = call, match, geo_latitude, is_newer, xor_part
  local IN_ARGV_DIGEST, STORED, RECORD = IN_ARGV_DIGEST, STORED, RECORD
  local added, journal, n_journal, add, n_add, beyond = 0, {}, 0, {}, 0, nil
  local out, n, first_previous = {''}, 1, nil
  local client_prefix = prefix .. 'client:'
  for server, skew, id, lat, lon, time, kind, source, chain in string.gmatch(ARGV[3], RECORD) do
    local advanced = '0'
    if chain ~= '' and may_step() then advanced = advance_offset(match(chain, CHAIN)) end
    local result = advanced
    if server ~= '' then
      local location = lat .. lon
      local at = 'AT ' .. server .. ' ' .. skew .. ' ' .. id .. ' ' .. location .. ' ' .. time
      local key = client_prefix .. id
      -- Two HGETs, the second only for a held client: cheaper than an HMGET's
      -- table for a new client, as cheap for a held one.
      local held_at = call('HGET', key, 'at')
      local held_time = held_at and call('HGET', key, 'time')
      if not held_time or is_newer(time, at, kind, held_time, held_at) then
        -- The summary, the GEO set's array and the log: written out here, not
        -- in functions (a Lua call per record each).
        if held_at then xor_part(held_at) else added = added + 1 end
        if not IN_ARGV_DIGEST[kind] then xor_part(at) end
        call('HSET', key, 'at', at, 'server', server, 'skew', skew, 'location', location,
             'lat', lat, 'lon', lon, 'time', time)
        if geo_latitude(lat) then
          add[n_add + 1], add[n_add + 2], add[n_add + 3] = lon, lat, id
          n_add = n_add + 3
          if beyond then beyond[id] = nil end  -- a later position within the band
        else
          beyond = beyond or {}
          beyond[id] = true
        end
        if n_journal == 0 then
          -- %.0f: exact below 2^53 elements, never "1e+14" as "%.14g" would write
          local top = journal_top()
          if ARGV[7] ~= '' then forget_a_log_gone_back(top) end  -- before log_epoch's first use
          first_previous = string.format('0-%.0f', top)
        end
        n_journal = n_journal + 1
        if source == '' then
          journal[n_journal] = id
        else
          journal[n_journal] = id .. '\t' .. source
        end
        result = STORED[advanced]
      elseif IN_ARGV_DIGEST[kind] then
        xor_part(at)  -- not stored: its part of ARGV[4] comes back out
      end
    end
    n = n + 1
    out[n] = result
  end
  if first_previous then
    out[1] = log_epoch() .. ' ' .. first_previous
    write_journal(journal, n_journal)
    write_digest(added)
  end
  write_places(add, n_add, beyond)
  call('SET', KEYS[6], may_step() and ARGV[6] or '-')
  return table.concat(out, '\n')
end

redis.register_function('herd_store_batch', store_batch)

-- Enqueue a batch (one entry or many) for one queue, all or nothing.
-- ARGV[4] n, or -n when every entry id is one the client has just made for this call's first
-- try (a random UUID no entry can hold yet: the lookup of taken ids is skipped; a retry, which
-- may follow a try that landed, sends n). Then per request 3 values: entry id, body, and its options as
-- 'priority,delay ms,max_attempts,ttl ms (-1 for none),dedup key' (the key last, '' for none;
-- it may hold commas), or '' for the same options as the request before it (a batch of
-- alike requests sends and parses its options once).
-- Returns {1, created, id...} (created: 1 if this call created the queue; per request the
-- entry id: new, or the one a repeated entry id or dedup key resolves to; a batch of ids the
-- client made that are all new returns no ids: they are the client's) or {0} when the new
-- entries would pass max_queue_length (nothing written).
--#include _queue
bind(KEYS, ARGV)
load_info()
local now = now_ms()
drop_if_idle(now)
prune(now)
local n = ARGV[4] + 0
local made = n < 0  -- the ids are the client's own, new (see above)
if made then
  n = -n
end
if n == 1 then
  -- One request (a plain send): the same steps as a batch's below, without its tables.
  local id, body, o = ARGV[5], ARGV[6], request_options(ARGV[7])
  local key = o[5]
  local found = nil
  if CREATED and not made and (redis.call('HEXISTS', K_META, id) == 1
      or (PRUNE_AT ~= -1 and redis.call('ZSCORE', K_SETTLED, id))) then
    found = id  -- a repeated entry id (live, dead or settled)
  elseif key then
    found = redis.call('HGET', K_DEDUP, key) or nil
  end
  if not found and over_cap(1) then
    return {0}
  end
  local created = create()
  touch(now)
  if not found and not hand_off(id, body, o, now) then
    write_one(id, body, o, now)
    wake()
  end
  return {1, created and 1 or 0, found or id}
end
-- Request i: its id ARGV[2 + 3i], its body ARGV[3 + 3i], its options opts[i] =
-- {priority, delay ms, max_attempts, ttl ms, dedup key or nil}.
local opts = {}
local last = nil
for i = 1, n do
  local raw = ARGV[4 + i * 3]
  if raw ~= '' then
    last = request_options(raw)
  end
  opts[i] = last
end
local plan, fresh = {}, {}
local batch_ids, batch_keys = {}, {}
-- Which entry ids are taken (live, dead or settled): one command per structure for the whole
-- batch, none for a queue that does not exist or (settled) when the prune gate says it is empty.
local held, settled = {}, {}
if CREATED and not made then
  local ids = {}
  for i = 1, n do
    ids[i] = ARGV[2 + i * 3]
  end
  held = redis.call('HMGET', K_META, unpack(ids))
  if PRUNE_AT ~= -1 then
    settled = redis.call('ZMSCORE', K_SETTLED, unpack(ids))
  end
end
for i = 1, n do
  local id, key = ARGV[2 + i * 3], opts[i][5]
  local found = nil
  if held[i] or settled[i] then
    found = id
  elseif key then
    found = redis.call('HGET', K_DEDUP, key) or nil
  end
  if not found then  -- (ids the client made are all different)
    found = (not made and batch_ids[id]) or (key and batch_keys[key])
  end
  if found then
    plan[#plan + 1] = found
  else
    plan[#plan + 1] = id
    fresh[#fresh + 1] = i
    if not made then
      batch_ids[id] = id
    end
    if key then
      batch_keys[key] = id
    end
  end
end
if #fresh > 0 and over_cap(#fresh) then
  return {0}
end
local created = create()
touch(now)
local handed = #fresh == 1 and hand_off(ARGV[2 + fresh[1] * 3], ARGV[3 + fresh[1] * 3],
  opts[fresh[1]], now)
if #fresh > 0 and not handed then
  -- The new entries' writes go out as one variadic command per structure (what admit() and
  -- push_due() do for one entry, for the whole batch): sequence numbers are taken in one step.
  local first = redis.call('HINCRBY', K_INFO, 'seq', n2s(#fresh)) - #fresh
  local bodies, metas, ready, delayed, expiry, dedup = {}, {}, {}, {}, {}, {}
  local soonest = -1  -- the earliest ttl or delay deadline of the batch
  -- A plain entry (due now, no ttl, no dedup key: a batch's usual request) shares all of its
  -- meta but the sequence number, and its ready score, with the others of its options (one
  -- table per run of alike options): made once per options, not once per entry.
  local plain = {}
  for k, i in ipairs(fresh) do
    local id, o = ARGV[2 + i * 3], opts[i]
    local key, ttl = o[5], o[4]
    local shape = plain[o]
    if shape == nil then
      shape = o[2] == 0 and ttl < 0 and not key and {
        -- the meta text with a '%d' left for the sequence number (one format per entry: a
        -- number joined with '..' would be printed with '%.14g')
        string.format('{"p":%d,"a":1,"m":%d,"q":%%d,"e":%d,"s":"r"}', o[1], o[3], now),
        n2s((9 - o[1]) * BAND + now),
      }
      plain[o] = shape
    end
    if shape then  -- what the steps below write for it, with encode_meta's text
      local q = first + k
      push(bodies, id, ARGV[3 + i * 3])
      push(ready, shape[2], string.format('%012x', q) .. id)
      push(metas, id, string.format(shape[1], q))
    else
      local m = {p = o[1], a = 1, m = o[3], q = first + k, e = now}
      if ttl >= 0 then
        m.ttl = ttl
        m.x = now + ttl
        push(expiry, n2s(m.x), id)
        if soonest < 0 or m.x < soonest then
          soonest = m.x
        end
      end
      if key then
        m.k = key
        push(dedup, key, id)
      end
      push(bodies, id, ARGV[3 + i * 3])
      local due = now + o[2]
      if due > now then
        m.s = 'd'
        push(delayed, n2s(due), id)
        if soonest < 0 or due < soonest then
          soonest = due
        end
      else
        m.s = 'r'
        push(ready, n2s((9 - m.p) * BAND + due), ready_member(id, m))
      end
      push(metas, id, encode_meta(m))
    end
  end
  if #dedup > 0 then
    redis.call('HSET', K_DEDUP, unpack(dedup))
  end
  redis.call('HSET', K_BODY, unpack(bodies))
  if #expiry > 0 then
    zadd_many(K_EXPIRY, expiry)
  end
  if #ready > 0 then
    zadd_many(K_READY, ready)
  end
  if #delayed > 0 then
    zadd_many(K_DELAYED, delayed)
  end
  redis.call('HSET', K_META, unpack(metas))
  if soonest >= 0 then
    due_by(soonest)
  end
end
if #fresh > 0 and not handed then
  wake()
end
if made and #fresh == n then
  return {1, created and 1 or 0}  -- every entry is new: its id is the one the client made
end
local out = {1, created and 1 or 0}
for _, id in ipairs(plan) do
  out[#out + 1] = id
end
return out

-- Enqueue a batch (one entry or many) for one queue, all or nothing.
-- ARGV[8] n, then per request 7 values: entry id, body, priority, delay ms, dedup key ('' for
-- none), max_attempts, ttl ms (-1 for none).
-- Returns {1, created, id...} (created: 1 if this call created the queue; per request the
-- entry id: new, or the one a repeated entry id or dedup key resolves to) or {0} when the new
-- entries would pass max_queue_length (nothing written).
--#include _queue
local now = now_ms()
drop_if_idle(now)
prune(now)
local n = tonumber(ARGV[8])
local plan, fresh = {}, {}
local batch_ids, batch_keys = {}, {}
for i = 0, n - 1 do
  local b = 9 + i * 7
  local id, key = ARGV[b], ARGV[b + 4]
  if key == '' then
    key = nil
  end
  local found = nil
  if redis.call('HEXISTS', K_META, id) == 1 or redis.call('ZSCORE', K_SETTLED, id) then
    found = id
  elseif key then
    found = redis.call('HGET', K_DEDUP, key) or nil
  end
  if not found then
    found = batch_ids[id] or (key and batch_keys[key])
  end
  if found then
    plan[#plan + 1] = found
  else
    plan[#plan + 1] = id
    fresh[#fresh + 1] = b
    batch_ids[id] = id
    if key then
      batch_keys[key] = id
    end
  end
end
if #fresh > 0 and live_count() + #fresh > MAX_LEN then
  return {0}
end
local created = create()
touch(now)
for _, b in ipairs(fresh) do
  local id, key, ttl = ARGV[b], ARGV[b + 4], tonumber(ARGV[b + 6])
  local m = {p = tonumber(ARGV[b + 2]), a = 1, m = tonumber(ARGV[b + 5])}
  if ttl >= 0 then
    m.ttl = ttl
  end
  if key ~= '' then
    m.k = key
    redis.call('HSET', K_DEDUP, key, id)
  end
  redis.call('HSET', K_BODY, id, ARGV[b + 1])
  admit(id, m, now, tonumber(ARGV[b + 3]))
end
if #fresh > 0 then
  wake()
end
local out = {1, created and 1 or 0}
for _, id in ipairs(plan) do
  out[#out + 1] = id
end
return out

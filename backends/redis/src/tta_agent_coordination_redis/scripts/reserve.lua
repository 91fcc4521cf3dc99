-- Reserve up to ARGV[9] due entries for ARGV[8] ms; ARGV[10...] one fresh token per entry.
-- Returns {now, deadline, next due (-1: none), id, body, meta, id, body, meta, ...}.
--#include _queue
local now = now_ms()
if not exists() or drop_if_idle(now) then
  return {n2s(now), '0', '-1'}
end
touch(now)
prune(now)
maintain(now)
local deadline = now + tonumber(ARGV[8])
local count = tonumber(ARGV[9])
local members = redis.call('ZRANGE', K_READY, 0, count - 1)
local out = {n2s(now), n2s(deadline), '-1'}
for i, member in ipairs(members) do
  local id = string.sub(member, 13)
  local m = get_meta(id)
  redis.call('ZREM', K_READY, member)
  if m.x then
    redis.call('ZREM', K_EXPIRY, id)
  end
  m.s = 'v'
  m.t = ARGV[9 + i]
  m.dl = deadline
  local raw = cjson.encode(m)
  redis.call('HSET', K_META, id, raw)
  redis.call('ZADD', K_RESERVED, n2s(deadline), id)
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', K_BODY, id)
  out[#out + 1] = raw
end
if redis.call('ZCARD', K_READY) > 0 then
  wake()  -- more is ready: pass the wake-up on to the next waiting consumer
else
  redis.call('DEL', K_WAKE)  -- nothing ready: a left-over wake-up would only wake a waiter idly
end
out[3] = n2s(next_due())
return out

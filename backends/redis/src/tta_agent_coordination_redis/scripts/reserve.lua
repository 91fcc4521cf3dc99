-- Reserve up to ARGV[9] due entries for ARGV[8] ms; ARGV[10...] one fresh token per entry.
-- Returns {now, deadline, next due (-1: none), id, body, meta, id, body, meta, ...}.
--#include _queue
load_info()
local now = now_ms()
if not exists() or drop_if_idle(now) then
  return {n2s(now), '0', '-1'}
end
touch(now)
prune(now)
maintain_due(now)
local deadline = now + tonumber(ARGV[8])
local count = tonumber(ARGV[9])
-- One more than asked for: whether more is ready after this batch, without a ZCARD.
local members = redis.call('ZRANGE', K_READY, 0, count)
local more = #members > count
members[count + 1] = nil
local out = {n2s(now), n2s(deadline), '-1'}
if #members > 0 then
  -- One variadic command per structure for the whole batch, not five per entry.
  local ids = {}
  for i, member in ipairs(members) do
    ids[i] = string.sub(member, 13)
  end
  local metas = redis.call('HMGET', K_META, unpack(ids))
  local bodies = redis.call('HMGET', K_BODY, unpack(ids))
  redis.call('ZREM', K_READY, unpack(members))
  local fields, scores, expiring = {}, {}, {}
  for i, id in ipairs(ids) do
    local m = cjson.decode(metas[i])
    if m.x then
      expiring[#expiring + 1] = id
    end
    m.s = 'v'
    m.t = ARGV[9 + i]
    m.dl = deadline
    local raw = cjson.encode(m)
    fields[#fields + 1] = id
    fields[#fields + 1] = raw
    scores[#scores + 1] = n2s(deadline)
    scores[#scores + 1] = id
    out[#out + 1] = id
    out[#out + 1] = bodies[i]
    out[#out + 1] = raw
  end
  if #expiring > 0 then
    redis.call('ZREM', K_EXPIRY, unpack(expiring))
  end
  redis.call('HSET', K_META, unpack(fields))
  redis.call('ZADD', K_RESERVED, unpack(scores))
  due_by(deadline)
end
if more then
  wake()  -- more is ready: pass the wake-up on to the next waiting consumer
else
  redis.call('DEL', K_WAKE)  -- nothing ready: a left-over wake-up would only wake a waiter idly
end
out[3] = n2s(DUE_AT or -1)  -- the gate: never later than the first deadline
return out

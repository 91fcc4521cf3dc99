-- Reserve up to ARGV[5] due entries for ARGV[4] ms. ARGV[6] a waiter token ('' for none),
-- ARGV[7] what the waiter does: 'first' (register until ARGV[8] ms from now if nothing is
-- taken), 'again' (take what was handed to it; stay registered if nothing is taken) or 'leave'
-- (take what was handed to it, then leave); ARGV[9...] one fresh token per entry.
-- Returns {now, deadline, next due (-1: none), id, body, meta, id, body, meta, ...}; the entries
-- handed to the waiter come first (each with its own deadline, in its meta's dl).
--#include _queue
bind(KEYS, ARGV)
load_info()
local now = now_ms()
if not exists() or drop_if_idle(now) then
  return {n2s(now), '0', '-1'}
end
touch(now)
prune(now)
maintain_due(now)
local deadline = now + ARGV[4]
local count = ARGV[5] + 0
local waiter, mode = ARGV[6], ARGV[7]
local until_ = n2s(deadline)  -- every entry of the batch is reserved until then
local out = {n2s(now), until_, '-1'}
local taken = 0
if waiter ~= '' and mode ~= 'first' then
  -- Entries handed to this waiter since it last looked (its block ended before it popped them).
  local hand = hand_key(waiter)
  local items = redis.call('LRANGE', hand, '0', '-1')
  if #items > 0 then
    redis.call('DEL', hand)
    for _, item in ipairs(items) do
      local id, body = hand_parts(item)
      local m = get_meta(id)
      if m and m.s == 'v' and m.t == waiter and m.dl > now then  -- still its reservation
        out[#out + 1] = id
        out[#out + 1] = body
        out[#out + 1] = encode_meta(m)
        taken = taken + 1
      end
    end
  end
end
local want = count - taken
if want == 1 then
  -- One entry (the common reserve): the same steps as a batch's below, without its tables.
  local members = redis.call('ZRANGE', K_READY, '0', '1')  -- and whether more is ready after it
  if #members > 0 then
    local member = members[1]
    local id = string.sub(member, 13)
    local stored = redis.call('HGET', K_META, id)
    local raw, expiring = reserved_meta(stored, ARGV[9], until_)
    if not raw then  -- (not written by this version of encode_meta)
      local m = cjson.decode(stored)
      m.s, m.t, m.dl = 'v', ARGV[9], deadline
      raw, expiring = encode_meta(m), m.x ~= nil
    end
    local body = redis.call('HGET', K_BODY, id)
    redis.call('ZREM', K_READY, member)
    if expiring then
      redis.call('ZREM', K_EXPIRY, id)
    end
    redis.call('HSET', K_META, id, raw)
    redis.call('ZADD', K_RESERVED, until_, id)
    due_by(deadline)
    out[#out + 1] = id
    out[#out + 1] = body
    out[#out + 1] = raw
    taken = taken + 1
  end
  if #members > 1 then
    wake()  -- more is ready: pass the wake-up on to the next waiting consumer
  else
    redis.call('DEL', K_WAKE)  -- nothing ready: a left-over wake-up would only wake a waiter idly
  end
elseif want > 0 then
  -- One more than asked for: whether more is ready after this batch, without a ZCARD.
  local members = redis.call('ZRANGE', K_READY, '0', n2s(want))
  local more = #members > want
  members[want + 1] = nil
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
      local raw, has_x = reserved_meta(metas[i], ARGV[8 + i], until_)
      if not raw then  -- (not written by this version of encode_meta)
        local m = cjson.decode(metas[i])
        m.s, m.t, m.dl = 'v', ARGV[8 + i], deadline
        raw, has_x = encode_meta(m), m.x ~= nil
      end
      if has_x then
        expiring[#expiring + 1] = id
      end
      fields[#fields + 1] = id
      fields[#fields + 1] = raw
      scores[#scores + 1] = until_
      scores[#scores + 1] = id
      out[#out + 1] = id
      out[#out + 1] = bodies[i]
      out[#out + 1] = raw
    end
    if #expiring > 0 then
      redis.call('ZREM', K_EXPIRY, unpack(expiring))
    end
    redis.call('HSET', K_META, unpack(fields))
    zadd_many(K_RESERVED, scores)
    due_by(deadline)
    taken = taken + #members
  end
  if more then
    wake()  -- more is ready: pass the wake-up on to the next waiting consumer
  else
    redis.call('DEL', K_WAKE)  -- nothing ready: a left-over wake-up would only wake a waiter idly
  end
end
if waiter ~= '' and not CLUSTER then
  local member = waiter .. '|' .. ARGV[4]
  if mode == 'leave' or (mode == 'again' and taken > 0) then
    redis.call('ZREM', K_WAITERS, member)
  elseif mode == 'first' and taken == 0 then
    register_waiter(member, now + tonumber(ARGV[8]), now)
  end
end
out[3] = n2s(DUE_AT or -1)  -- the gate: never later than the first deadline
return out

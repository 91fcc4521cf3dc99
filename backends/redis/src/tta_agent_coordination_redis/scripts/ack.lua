-- Ack receipts of one queue: ARGV[4] n, then n pairs (token, entry id).
-- Returns one 1/0 per receipt: 1 for a current receipt or a repeat of a successful ack.
--#include _queue
bind(KEYS, ARGV)
load_info()
local out = {}
local n = ARGV[4] + 0
if not exists() then
  for i = 1, n do
    out[i] = 0
  end
  return out
end
local now = now_ms()
if n == 1 then
  -- One receipt (the common ack): the same steps as a batch's below, without its tables.
  local token, id = ARGV[5], ARGV[6]
  local m = current_to_ack(token, id, now)
  if m then
    local forget_at = now + conf()[5]  -- the end of the acked id's retention
    redis.call('ZREM', K_RESERVED, id)
    if m.x then
      redis.call('ZREM', K_EXPIRY, id)
    end
    redis.call('HDEL', K_META, id)
    redis.call('HDEL', K_BODY, id)
    redis.call('ZADD', K_SETTLED, n2s(forget_at), id)
    redis.call('HSET', K_ACKS, id, token)
    release_dedup(id, m, now)
    prune_by(forget_at)
    return {1}
  end
  if redis.call('ZSCORE', K_SETTLED, id) and redis.call('HGET', K_ACKS, id) == token then
    return {1}  -- a repeat of a successful ack
  end
  return {0}
end
-- The writes of every current receipt are gathered and sent as one variadic command per
-- structure after the loop. An entry acked earlier in the same batch still looks current to a
-- repeat of its receipt (answered 1, as a repeated ack is) and, to any other receipt of it,
-- stale (answered 0, as before).
local acked, settled, tokens, expiring = {}, {}, {}, {}
local forget_at = n2s(now + conf()[5])  -- the end of every acked id's retention
local ids = {}
for i = 1, n do
  ids[i] = ARGV[4 + 2 * i]
end
local metas = redis.call('HMGET', K_META, unpack(ids))  -- one read for the whole batch
for i = 1, n do
  local token, id = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local m = current_to_ack(token, id, now, metas[i])
  if m then
    if not tokens[id] then
      tokens[id] = token
      acked[#acked + 1] = id
      settled[#settled + 1] = forget_at
      settled[#settled + 1] = id
      if m.x then
        expiring[#expiring + 1] = id
      end
      release_dedup(id, m, now)
    end
    out[i] = 1
  elseif redis.call('ZSCORE', K_SETTLED, id) and redis.call('HGET', K_ACKS, id) == token then
    out[i] = 1
  else
    out[i] = 0
  end
end
if #acked > 0 then
  redis.call('ZREM', K_RESERVED, unpack(acked))
  if #expiring > 0 then
    redis.call('ZREM', K_EXPIRY, unpack(expiring))
  end
  redis.call('HDEL', K_META, unpack(acked))
  redis.call('HDEL', K_BODY, unpack(acked))
  zadd_many(K_SETTLED, settled)
  local pairs_ = {}
  for _, id in ipairs(acked) do
    pairs_[#pairs_ + 1] = id
    pairs_[#pairs_ + 1] = tokens[id]
  end
  redis.call('HSET', K_ACKS, unpack(pairs_))
  prune_by(now + conf()[5])
end
return out

-- Read a queue after the same maintenance as reserve (reclaim, promote, expire, retention).
-- ARGV[4] what:
--   stats: returns {exists, ready, delayed, reserved, dead}
--   dead_count: returns {exists, n}
--   dead_get: ARGV[5] entry id; returns {exists, id, body, meta, info} or {exists}
--   dead_list: ARGV[5] after sequence, ARGV[6] limit; returns {exists, more, seq, id, body,
--     meta, info, ...} (oldest first)
--#include _queue
bind(KEYS, ARGV)
load_info()
local now = now_ms()
if not exists() or drop_if_idle(now) then
  return {0}
end
maintain_due(now)
trim_dead(now)
local what = ARGV[4]
if what == 'stats' then
  return {1, redis.call('ZCARD', K_READY), redis.call('ZCARD', K_DELAYED),
    redis.call('ZCARD', K_RESERVED), redis.call('ZCARD', K_DEAD)}
elseif what == 'dead_count' then
  return {1, redis.call('ZCARD', K_DEAD)}
elseif what == 'dead_get' then
  local id = ARGV[5]
  local info = redis.call('HGET', K_DEADINFO, id)
  if not info then
    return {1}
  end
  return {1, id, redis.call('HGET', K_BODY, id), redis.call('HGET', K_META, id), info}
elseif what == 'dead_list' then
  local limit = tonumber(ARGV[6])
  local rows = redis.call('ZRANGE', K_DEAD, '(' .. ARGV[5], '+inf', 'BYSCORE', 'LIMIT', 0,
    limit + 1, 'WITHSCORES')
  local out = {1, 0}
  for i = 1, #rows, 2 do
    if (i + 1) / 2 > limit then
      out[2] = 1
      break
    end
    local id = rows[i]
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', K_BODY, id)
    out[#out + 1] = redis.call('HGET', K_META, id)
    out[#out + 1] = redis.call('HGET', K_DEADINFO, id)
  end
  return out
end
return redis.error_reply('unknown read ' .. what)

-- Queue management. ARGV[4] what:
--   replay / purge: ARGV[5] '1' for all dead letters, else the entry ids from ARGV[6];
--     returns the ids replayed / the number purged
--   reclaim: returns how many expired reservations were reclaimed
--   drop: returns the number of entries removed (live and dead)
--   drop_idle: drops the queue only if its idle ttl lapsed; returns 1 if the queue is gone
--     (dropped now or before), 2 if it exists without an idle ttl, 0 if it is kept
--   set_ttl: ARGV[5] idle ttl ms (-1: none); creates the queue; returns 1 if it created it
--#include _queue
bind(KEYS, ARGV)
load_info()
local now = now_ms()
local what = ARGV[4]
if what == 'drop' then
  if not exists() then
    return 0
  end
  return drop_queue()
elseif what == 'drop_idle' then
  if not exists() or drop_if_idle(now) then
    return 1
  end
  if not IDLE_TTL then
    return 2
  end
  return 0
elseif what == 'set_ttl' then
  drop_if_idle(now)
  local created = create()
  local ttl = tonumber(ARGV[5])
  if ttl < 0 then
    redis.call('HDEL', K_INFO, 'idle_ttl', 'idle_until')
    IDLE_TTL, IDLE_UNTIL = nil, -1
    if not CLUSTER then
      redis.call('ZREM', K_IDLE, NAME)
    end
  else
    redis.call('HSET', K_INFO, 'idle_ttl', n2s(ttl))
    IDLE_TTL = ttl
    touch(now)
  end
  return created and 1 or 0
end
if not exists() or drop_if_idle(now) then
  if what == 'replay' then
    return {}
  end
  return 0
end
local reclaimed = maintain(now)
if what == 'reclaim' then
  return reclaimed
end
trim_dead(now)
local chosen = {}
if ARGV[5] == '1' then
  chosen = redis.call('ZRANGE', K_DEAD, 0, -1)
else
  for i = 6, #ARGV do
    chosen[#chosen + 1] = ARGV[i]
  end
end
if what == 'purge' then
  local purged = 0
  for _, id in ipairs(chosen) do
    if redis.call('ZSCORE', K_DEAD, id) then
      drop_dead(id, now)
      purged = purged + 1
    end
  end
  return purged
elseif what == 'replay' then
  local replayed = {}
  for _, id in ipairs(chosen) do
    if redis.call('ZSCORE', K_DEAD, id) then
      redis.call('ZREM', K_DEAD, id)
      redis.call('HDEL', K_DEADINFO, id)
      local m = get_meta(id)
      m.a = 1
      if m.k then
        local held = redis.call('HGET', K_DEDUP, m.k)
        if not held or held == id then
          redis.call('HSET', K_DEDUP, m.k, id)
          redis.call('ZREM', K_DEDUPX, m.k)
        else
          m.k = nil
        end
      end
      admit(id, m, now, 0)
      replayed[#replayed + 1] = id
    end
  end
  if #replayed > 0 then
    trim_dead(now)
    wake()
  end
  return replayed
end
return redis.error_reply('unknown action ' .. what)

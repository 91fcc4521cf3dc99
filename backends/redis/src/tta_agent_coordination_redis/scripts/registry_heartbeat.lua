-- heartbeat: ARGV[4] agent id, [5] token, [6] load ("" keeps it), [7] available ("" keeps it).
-- Returns {"ok", SNAPSHOT fields...}, {"notfound"} or {"conflict"}. After expiry the session
-- is registered again (a registered event); a heartbeat that changes nothing is no event.
--#include registry_lib
local now = now_us()
expire(now)
local id, token = ARGV[4], ARGV[5]
local key = AGENT .. id
local rec = redis.call('HMGET', key, 'token', 'expired', 'load', 'available', 'static', 'caps',
                       'ttl', 'ttl_us')
if not rec[1] then
  return {'notfound'}
end
if rec[1] ~= token then
  return {'conflict'}
end
local load = rec[3]
if ARGV[6] ~= '' then
  load = ARGV[6]
end
local available = rec[4]
if ARGV[7] ~= '' then
  available = ARGV[7]
end
if rec[2] == '1' then
  start(id, key, token, rec[5], rec[6], load, available, rec[7], rec[8], now)
else
  local changed = tonumber(load) ~= tonumber(rec[3]) or available ~= rec[4]
  local expires = now + tonumber(rec[8])
  redis.call('HSET', key, 'load', load, 'available', available, 'heartbeat', fmt(now),
             'expires', fmt(expires))
  redis.call('ZADD', K_LIVE, fmt(expires), id)
  if changed then
    emit('updated', id, now, key)
  end
end
local out = {'ok'}
for _, value in ipairs(snapshot(key)) do
  out[#out + 1] = value
end
return out

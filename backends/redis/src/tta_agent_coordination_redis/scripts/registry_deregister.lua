-- deregister: ARGV[4] agent id, [5] token. Returns 1 if the token was the agent's session
-- (ended now; a deregistered event unless it had already expired), else 0.
--#include registry_lib
local now = now_us()
expire(now)
local id, token = ARGV[4], ARGV[5]
local key = AGENT .. id
local rec = redis.call('HMGET', key, 'token', 'expired')
if not rec[1] or rec[1] ~= token then
  return 0
end
if rec[2] == '0' then
  unindex(id, key)
  emit('deregistered', id, now, key)
end
redis.call('DEL', key)
redis.call('ZREM', K_IDS, id)
return 1

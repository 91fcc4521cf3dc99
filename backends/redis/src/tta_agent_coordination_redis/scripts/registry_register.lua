-- register: ARGV[4] agent id, [5] token, [6] static JSON, [7] capability names (comma-joined),
-- [8] load, [9] available ("1"/"0"), [10] ttl, [11] ttl in microseconds, [12] replace ("1"/"0").
-- Returns {"ok"}, or {"conflict"} when the id is live under another session and not replace.
-- A retry of a register that already happened (same token, still live) writes nothing.
--#include registry_lib
local now = now_us()
expire(now)
local id, token = ARGV[4], ARGV[5]
local key = AGENT .. id
local current = redis.call('HMGET', key, 'token', 'expired')
if current[2] == '0' then
  if current[1] == token then
    return {'ok'}
  end
  if ARGV[12] ~= '1' then
    return {'conflict'}
  end
  unindex(id, key)
end
start(id, key, token, ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10], ARGV[11], now)
return {'ok'}

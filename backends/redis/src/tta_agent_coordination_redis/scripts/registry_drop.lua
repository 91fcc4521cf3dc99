-- drop: delete every registry key of the namespace (drop_namespace), found from the indexes:
-- each kept session's HASH and the capability SETs its capabilities name, then the indexes,
-- the event stream and the head. Returns how many sessions were dropped.
--#include registry_lib
local ids = redis.call('ZRANGE', K_IDS, 0, -1)
for _, id in ipairs(ids) do
  local key = AGENT .. id
  for _, name in ipairs(caps_of(key)) do
    redis.call('DEL', CAP .. name)
  end
  redis.call('DEL', key)
end
redis.call('DEL', K_HEAD, K_EVENTS, K_LIVE, K_IDS)
return #ids

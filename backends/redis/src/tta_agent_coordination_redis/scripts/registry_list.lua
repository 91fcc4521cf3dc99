-- list: ARGV[4] "all", "type" or "capability"; ARGV[5] the type or capability name.
-- Returns the live agents as a flat list: id followed by its SNAPSHOT fields, for each.
--#include registry_lib
expire(now_us())
local mode, arg = ARGV[4], ARGV[5]
local ids
if mode == 'capability' then
  ids = redis.call('SMEMBERS', CAP .. arg)
elseif mode == 'type' then
  -- "type:" <= id < "type;" is every id of the type with an instance (';' follows ':').
  ids = redis.call('ZRANGEBYLEX', K_IDS, '[' .. arg .. ':', '(' .. arg .. ';')
  if redis.call('ZSCORE', K_IDS, arg) then
    ids[#ids + 1] = arg
  end
else
  ids = redis.call('ZRANGE', K_LIVE, 0, -1)
end
return live_records(ids)

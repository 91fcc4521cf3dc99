-- discover: ARGV[4] capability name, ARGV[5] max_load ("" for none). Returns the live,
-- available holders of a capability of that name under the load ceiling, as list does; the
-- client checks versions and tags. Costs in proportion to the live holders of the name.
--#include registry_lib
expire(now_us())
local max_load = tonumber(ARGV[5])
return live_records(redis.call('SMEMBERS', CAP .. ARGV[4]), function(values)
  -- values: expired, static, load, available, ...
  return values[4] == '1' and (max_load == nil or tonumber(values[3]) <= max_load)
end)

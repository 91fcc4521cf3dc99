-- get: ARGV[4] agent id. Returns {id, SNAPSHOT fields...} for a live agent, else {}.
--#include registry_lib
expire(now_us())
return live_records({ARGV[4]})

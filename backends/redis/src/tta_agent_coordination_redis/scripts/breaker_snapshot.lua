-- snapshot: the current state, written nowhere (a name never used is closed with zeros and
-- stays out of the index).
--#include breaker_lib
local now = now_us()
return decision(false, nil, load(now), now, nil)

-- reset: close the breaker from any state and forget its failures (a transition unless it
-- was closed already).
--#include breaker_lib
local now = now_us()
local b = load(now)
local transition
if b.state ~= 'closed' then
  transition = move(b, 'closed', now)
end
b.failures = {}
b.successes = 0
save(b)
return decision(false, nil, b, now, transition)

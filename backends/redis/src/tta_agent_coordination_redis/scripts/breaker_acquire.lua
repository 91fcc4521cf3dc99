-- acquire: ARGV[8] the permit to grant if a probe is let through (fixed by the client before
-- the first try, so a retried acquire gets the same permit back). Closed: allowed, no permit.
-- Open: refused until the recovery timeout ends; then the first caller moves it to half-open.
-- Half-open: a permit (a lease of probe_timeout) while fewer than half_open_max_calls are out.
--#include breaker_lib
local now = now_us()
local b = load(now)
local transition
if b.state == 'closed' then
  redis.call('SADD', K_NAMES, NAME)  -- nothing else changes: the hot path writes no state
  return decision(true, nil, b, now, nil)
end
if b.state == 'open' then
  if retry_after(b, now) ~= nil then
    redis.call('SADD', K_NAMES, NAME)  -- refused while open: nothing changes
    return decision(false, nil, b, now, nil)
  end
  transition = move(b, 'half_open', now)
end
local permit = ARGV[8]
if b.permits[permit] ~= nil then
  -- A retry of an acquire whose answer was lost (the permit id is fixed before the first
  -- try): hand back the same permit instead of taking a second slot.
  return decision(true, permit, b, now, transition)
end
if b.npermits >= MAX_CALLS then
  save(b)
  return decision(false, nil, b, now, transition)
end
b.permits[permit] = now + PROBE
b.npermits = b.npermits + 1
save(b)
return decision(true, permit, b, now, transition)

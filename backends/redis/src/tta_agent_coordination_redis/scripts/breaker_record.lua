-- record: ARGV[8] "success" or "failure", ARGV[9] the probe permit ("" for none).
-- Closed: a permit-less failure counts (failure_threshold of them open it); a permit-less
-- success forgets consecutive failures. Half-open: only a current permit counts; a success
-- adds up to success_threshold (closed), a failure re-opens. Anything else is ignored.
-- An outcome that changes nothing (a success with no failures to forget, an ignored one)
-- writes nothing but the name into the index.
--#include breaker_lib
local now = now_us()
local b = load(now)
local outcome, permit = ARGV[8], ARGV[9]
local transition
local changed = false
if b.state == 'closed' then
  if permit == '' then
    if outcome == 'success' then
      if WINDOW == nil and #b.failures > 0 then
        b.failures = {}
        changed = true
      end
    else
      b.failures[#b.failures + 1] = now
      local keep = {}
      local since = WINDOW and (now - WINDOW) or nil
      for _, t in ipairs(b.failures) do
        if since == nil or t >= since then
          keep[#keep + 1] = t
        end
      end
      while #keep > THRESHOLD do
        table.remove(keep, 1)
      end
      b.failures = keep
      changed = true
      if #b.failures >= THRESHOLD then
        transition = move(b, 'open', now)
      end
    end
  end
elseif b.state == 'half_open' and permit ~= '' and b.permits[permit] ~= nil then
  changed = true
  if outcome == 'success' then
    b.permits[permit] = nil
    b.npermits = b.npermits - 1
    b.successes = b.successes + 1
    if b.successes >= SUCCESS_THRESHOLD then
      transition = move(b, 'closed', now)
    end
  else
    b.failures[#b.failures + 1] = now
    transition = move(b, 'open', now)
  end
end
if changed then
  save(b)
else
  redis.call('SADD', K_NAMES, NAME)
end
return decision(false, nil, b, now, transition)

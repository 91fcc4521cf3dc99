-- read_events: ARGV[4] cursor ("" = only new ones, "0" = the oldest retained), ARGV[5] limit.
-- Returns {"ok", position, microseconds until the next expiry or "", entries}: the events
-- after position (XRANGE entries); {"ahead", head} for a cursor past the head; {"gap"} when
-- events after the cursor were trimmed. The head is read before expiring, so the expired
-- events this call detects are returned even to a reader that asked for only new ones.
--#include registry_lib
local after = ARGV[4]
local h = head()
local pos = h
if after ~= '' and after ~= '0' then
  pos = tonumber(after)
  if pos > h then
    return {'ahead', fmt(h)}
  end
end
local now = now_us()
expire(now)
local first_kept
local first = redis.call('XRANGE', K_EVENTS, '-', '+', 'COUNT', 1)
if #first > 0 then
  first_kept = seq_of(first[1][1])
else
  first_kept = head() + 1
end
if after == '0' then
  pos = first_kept - 1
elseif pos + 1 < first_kept then
  return {'gap'}
end
local entries = redis.call('XRANGE', K_EVENTS, fmt(pos + 1), '+', 'COUNT', ARGV[5])
local next_expiry = ''
local soonest = redis.call('ZRANGE', K_LIVE, 0, 0, 'WITHSCORES')
if #soonest > 0 then
  next_expiry = fmt(math.max(0, tonumber(soonest[2]) - now))
end
return {'ok', fmt(pos), next_expiry, entries}

-- The queue index as it stands now (single server: the idle index scores are the times the
-- idle ttls lapse). KEYS[1] clock, KEYS[2] queues, KEYS[3] idle.
-- ARGV[1] 'all', or 'page' with ARGV[2] the exclusive lower bound ('' for the start) and
-- ARGV[3] the page size (up to ARGV[3] + 1 names are returned, so the caller sees if more
-- follow). Returns {names, lapsed}: the live names in order, and the queues whose idle ttl
-- lapsed (left out of names; the caller drops them).
--#include _time
local now = tta_now(KEYS[1])
local lapsed = redis.call('ZRANGE', KEYS[3], '-inf', string.format('%.0f', now), 'BYSCORE')
local gone = {}
for _, name in ipairs(lapsed) do
  gone[name] = true
end
local found
if ARGV[1] == 'all' then
  found = redis.call('ZRANGE', KEYS[2], 0, -1)
else
  local low = '-'
  if ARGV[2] ~= '' then
    low = '(' .. ARGV[2]
  end
  local want = tonumber(ARGV[3]) + 1
  found = redis.call('ZRANGE', KEYS[2], low, '+', 'BYLEX', 'LIMIT', 0, want + #lapsed)
end
local names = {}
for _, name in ipairs(found) do
  if not gone[name] and (ARGV[1] == 'all' or #names <= tonumber(ARGV[3])) then
    names[#names + 1] = name
  end
end
return {names, lapsed}

-- Ack receipts of one queue: ARGV[8] n, then n pairs (token, entry id).
-- Returns one 1/0 per receipt: 1 for a current receipt or a repeat of a successful ack.
--#include _queue
local out = {}
local n = tonumber(ARGV[8])
if not exists() then
  for i = 1, n do
    out[i] = 0
  end
  return out
end
local now = now_ms()
for i = 1, n do
  local token, id = ARGV[7 + 2 * i], ARGV[8 + 2 * i]
  local m = current(token, id, now)
  if m then
    unlink(id, m)
    forget(id)
    settle(id, token, now)
    release_dedup(id, m, now)
    out[i] = 1
  elseif redis.call('ZSCORE', K_SETTLED, id) and redis.call('HGET', K_ACKS, id) == token then
    out[i] = 1
  else
    out[i] = 0
  end
end
return out

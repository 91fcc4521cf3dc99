-- Settle one receipt other than by ack. ARGV[7] action, ARGV[8] token, ARGV[9] entry id, then:
--   nack: ARGV[10] delay ms, ARGV[11] error ('' none), ARGV[12] 1 if an error is given
--   release: nothing
--   extend: ARGV[10] visibility ms
--   dead_letter: ARGV[10] reason, ARGV[11] error, ARGV[12] 1 if an error is given
-- Returns 1 if the receipt was current (and the action done), else 0.
--#include _queue
if not exists() then
  return 0
end
local now = tta_now(K_CLOCK)
local action, token, id = ARGV[7], ARGV[8], ARGV[9]
local m = current(token, id, now)
if not m then
  return 0
end
if action == 'nack' then
  if ARGV[12] == '1' then
    m.l = ARGV[11]
  end
  if m.a >= m.m then
    exhaust(id, m, now)
  else
    m.a = m.a + 1
    give_back(id, m, now + tonumber(ARGV[10]), now)
    wake()
  end
elseif action == 'release' then
  give_back(id, m, now, now)
  wake()
elseif action == 'extend' then
  m.dl = now + tonumber(ARGV[10])
  put_meta(id, m)
  redis.call('ZADD', K_RESERVED, n2s(m.dl), id)
elseif action == 'dead_letter' then
  local err = nil
  if ARGV[12] == '1' then
    err = ARGV[11]
  end
  to_dead(id, m, ARGV[10], err, m.a, now)
else
  return redis.error_reply('unknown action ' .. action)
end
return 1

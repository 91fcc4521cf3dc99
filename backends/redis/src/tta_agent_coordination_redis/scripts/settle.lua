-- Settle one receipt other than by ack. ARGV[4] action, ARGV[5] token, ARGV[6] entry id, then:
--   nack: ARGV[7] delay ms, ARGV[8] error ('' none), ARGV[9] 1 if an error is given
--   release: nothing
--   extend: ARGV[7] visibility ms
--   dead_letter: ARGV[7] reason, ARGV[8] error, ARGV[9] 1 if an error is given
-- Returns 1 if the receipt was current (and the action done), else 0.
--#include _queue
bind(KEYS, ARGV)
load_info()
if not exists() then
  return 0
end
local now = now_ms()
local action, token, id = ARGV[4], ARGV[5], ARGV[6]
local m = current(token, id, now)
if not m then
  return 0
end
if action == 'nack' then
  if ARGV[9] == '1' then
    m.l = ARGV[8]
  end
  if m.a >= m.m then
    exhaust(id, m, now)
  else
    m.a = m.a + 1
    give_back(id, m, now + tonumber(ARGV[7]), now)
    wake()
  end
elseif action == 'release' then
  give_back(id, m, now, now)
  wake()
elseif action == 'extend' then
  m.dl = now + tonumber(ARGV[7])
  put_meta(id, m)
  redis.call('ZADD', K_RESERVED, n2s(m.dl), id)
  due_by(m.dl)
elseif action == 'dead_letter' then
  local err = nil
  if ARGV[9] == '1' then
    err = ARGV[8]
  end
  to_dead(id, m, ARGV[7], err, m.a, now)
else
  return redis.error_reply('unknown action ' .. action)
end
return 1

-- KEYS[1] a queue's info, KEYS[2] its wake list. Wake the queue's waiting consumers (after a
-- clock change) if the queue still exists: a dropped queue gets no stray wake key.
if redis.call('HEXISTS', KEYS[1], 'created') == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], '1')
redis.call('LTRIM', KEYS[2], 0, 0)
return 1

-- KEYS[1] queues, KEYS[2] idle (namespace-wide); ARGV[1] a queue name, ARGV[2] '1' to keep
-- it in the queue index. On Redis Cluster the queue scripts cannot reach these keys: the
-- client removes a dropped queue from them with this script.
if ARGV[2] ~= '1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZREM', KEYS[2], ARGV[1])

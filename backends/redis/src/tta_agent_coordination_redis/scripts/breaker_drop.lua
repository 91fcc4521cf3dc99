-- drop: delete every breaker of the namespace (drop_namespace), found from the index.
-- KEYS[1] names SET; ARGV[1] the prefix of a breaker's HASH key. Returns how many.
local names = redis.call('SMEMBERS', KEYS[1])
for _, name in ipairs(names) do
  redis.call('DEL', ARGV[1] .. name)
end
redis.call('DEL', KEYS[1])
return #names

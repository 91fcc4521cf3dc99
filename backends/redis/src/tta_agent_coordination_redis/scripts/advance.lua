-- KEYS[1] clock; ARGV[1] milliseconds to add. Returns the new offset.
return redis.call('INCRBY', KEYS[1], ARGV[1])

-- KEYS[1] clock, KEYS[2] idle. Returns the names of queues whose idle ttl lapsed.
--#include _time
return redis.call('ZRANGE', KEYS[2], '-inf', string.format('%.0f', tta_now(KEYS[1])), 'BYSCORE')

-- The registry's shared prelude, included by every registry_*.lua script
-- (`--#include registry_lib`).
--
-- KEYS[1] clock    STRING  milliseconds added to TIME (clock_control; absent = 0)
-- KEYS[2] head     STRING  the sequence number of the newest event (absent = seed from TIME)
-- KEYS[3] events   STREAM  entry ids "<seq>-0", trimmed to exactly ARGV[3] entries
-- KEYS[4] live     ZSET    live agent id -> expiry time (microseconds)
-- KEYS[5] ids      ZSET    every kept session's agent id, score 0 (ordered by id)
-- ARGV[1] the prefix of an agent's HASH key (agent id appended)
-- ARGV[2] the prefix of a capability's SET key (capability name appended)
-- ARGV[3] events_max_length
-- An agent HASH: token, static (capabilities and metadata JSON), caps (names, comma-joined),
-- load, available ("1"/"0"), ttl (as given), ttl_us, registered, heartbeat, expires
-- (microseconds) and expired ("1" once its expired event was emitted).
local K_CLOCK, K_HEAD, K_EVENTS, K_LIVE, K_IDS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local AGENT, CAP, MAXLEN = ARGV[1], ARGV[2], ARGV[3]

-- The fields of an agent every answer and every event carries (never the token).
local SNAPSHOT = {'static', 'load', 'available', 'ttl', 'registered', 'heartbeat', 'expires'}

local function fmt(n)
  return string.format('%d', n)
end

local function server_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The backend's clock in microseconds: the server's TIME plus the namespace's offset.
local function now_us()
  return server_us() + math.floor(tonumber(redis.call('GET', K_CLOCK) or '0') * 1000)
end

-- The newest event's sequence number. A log that does not exist yet starts at the server's
-- time in microseconds, so a log re-created after drop_namespace continues above every cursor
-- handed out before: old cursors get EventsGapError instead of silently skipping events.
local function head()
  local h = redis.call('GET', K_HEAD)
  if h then
    return tonumber(h)
  end
  local seed = server_us()
  redis.call('SET', K_HEAD, fmt(seed))
  return seed
end

local function seq_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function snapshot(key)
  return redis.call('HMGET', key, unpack(SNAPSHOT))
end

local function emit(kind, id, at, key)
  local seq = head() + 1
  redis.call('SET', K_HEAD, fmt(seq))
  local values = snapshot(key)
  local args = {'XADD', K_EVENTS, 'MAXLEN', MAXLEN, fmt(seq) .. '-0',
                'kind', kind, 'id', id, 'at', fmt(at)}
  for i, field in ipairs(SNAPSHOT) do
    args[#args + 1] = field
    args[#args + 1] = values[i] or ''
  end
  redis.call(unpack(args))
end

local function caps_of(key)
  local names = {}
  local caps = redis.call('HGET', key, 'caps')
  if caps then
    for name in string.gmatch(caps, '[^,]+') do
      names[#names + 1] = name
    end
  end
  return names
end

local function index(id, key, expires)
  for _, name in ipairs(caps_of(key)) do
    redis.call('SADD', CAP .. name, id)
  end
  redis.call('ZADD', K_LIVE, fmt(expires), id)
end

local function unindex(id, key)
  for _, name in ipairs(caps_of(key)) do
    redis.call('SREM', CAP .. name, id)
  end
  redis.call('ZREM', K_LIVE, id)
end

-- Expire every live agent whose expiry time has passed, emitting its expired event in the same
-- atomic step: whichever client runs this first emits it, nobody else ever sees it live.
local function expire(now)
  local due = redis.call('ZRANGEBYSCORE', K_LIVE, '-inf', fmt(now))
  local count = 0
  for _, id in ipairs(due) do
    local key = AGENT .. id
    local expires = redis.call('HGET', key, 'expires')
    unindex(id, key)
    if expires then
      redis.call('HSET', key, 'expired', '1')
      emit('expired', id, tonumber(expires), key)
      count = count + 1
    end
  end
  return count
end

-- Write a fresh live session (the caller has unindexed any live one) and announce it.
local function start(id, key, token, static, caps, load, available, ttl, ttl_us, now)
  local expires = now + tonumber(ttl_us)
  redis.call('DEL', key)
  redis.call('HSET', key, 'token', token, 'static', static, 'caps', caps, 'load', load,
             'available', available, 'ttl', ttl, 'ttl_us', ttl_us, 'registered', fmt(now),
             'heartbeat', fmt(now), 'expires', fmt(expires), 'expired', '0')
  redis.call('ZADD', K_IDS, 0, id)
  index(id, key, expires)
  emit('registered', id, now, key)
end

-- Live agents among ids, as a flat list: id followed by its SNAPSHOT fields, for each.
local function live_records(ids, keep)
  local out = {}
  for _, id in ipairs(ids) do
    local key = AGENT .. id
    local values = redis.call('HMGET', key, 'expired', unpack(SNAPSHOT))
    if values[1] == '0' and (keep == nil or keep(values)) then
      out[#out + 1] = id
      for i = 2, #values do
        out[#out + 1] = values[i]
      end
    end
  end
  return out
end

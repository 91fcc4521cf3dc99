-- Shared helpers of the queue scripts (inlined by --#include _queue).
--
-- KEYS: 1 clock, 2 queues (index), 3 idle (namespace-wide), 4 the queue's info hash; on Redis
-- Cluster the queue's other keys follow: 5 meta, 6 body, 7 ready, 8 delayed, 9 reserved,
-- 10 expiry, 11 dead, 12 deadinfo, 13 settled, 14 acks, 15 dedup, 16 dedupx, 17 wake,
-- 18 waiters. On a single server the client passes the first four only and the script names
-- the others from the info key's prefix (they differ only in the last part): every key passed
-- costs the server a string on each run, and most runs touch few of them.
-- ARGV: 1 queue name, 2 the queue settings 'max_queue_length,dedup_window ms,
-- dead_letter_max_age ms (-1: none),dead_letter_max_length (-1: none),entry_id_retention ms'
-- (read by conf() when a run needs one), 3 the clock offset in ms on Redis Cluster ('' on a
-- single server); the operation's own arguments follow from ARGV[4].
--
-- On a single server KEYS 1-3 are the namespace's keys and the script keeps the queue index
-- and the idle index itself. On Redis Cluster they live on another slot: the caller passes
-- the queue's own `info` key in their place (never touched), the clock offset in ARGV[3], and
-- updates the namespace indexes with separate commands.
--
-- Times are integer milliseconds on the backend's clock. An entry's state lives in meta[id]
-- as JSON: p priority, a attempt, m max_attempts, e enqueued at, q sequence (none until the
-- entry is first ready: see ready_member), s state ('r' ready, 'd' delayed, 'v' reserved,
-- 'x' dead), t receipt token, dl reservation deadline, x ttl deadline, ttl, k dedup key,
-- l last error.
--
-- Every script starts with load_info(): one HMGET of the queue's info hash. Besides whether
-- the queue exists and its idle ttl, it holds two gates that spare the common call the scans
-- of sorted sets whose first deadline is still ahead: info.md, the earliest time a
-- reservation, a delayed entry or a ttl may fall due, and info.pn, the earliest time a settled
-- entry id or a dedup key may be forgotten. A gate is never later than the truth (a write that
-- adds an earlier deadline lowers it; a removal leaves it early, and the scan it lets through
-- sets it again); -1 means nothing is pending, and a missing field (a queue written before the
-- gates, or after a drop) means unknown: the scan runs and sets it.
--#include _time

-- The run's keys and arguments, set by bind(KEYS, ARGV), the first line of every queue script.
-- A queue script runs either as a script (EVALSHA: everything below is made again on every
-- run) or as a function of the queue library (FCALL, docs/redis-layout.md: the helpers are made
-- once, when the library is loaded, and the caches below live as long as it does).
local K_CLOCK, K_QUEUES, K_IDLE, K_INFO
local K_META, K_BODY, K_READY, K_DELAYED, K_RESERVED, K_EXPIRY, K_DEAD, K_DEADINFO, K_SETTLED
local K_ACKS, K_DEDUP, K_DEDUPX, K_WAKE, K_WAITERS
local NAME, SETTINGS, CLUSTER, OFFSET

-- Per info key, the names of the queue's other keys; per settings argument, its numbers; per
-- request options argument (enqueue.lua), its values. Bounded together (emptied when full:
-- reply queues come and go, dedup keys differ per request). Their values are never changed.
local NAMES, CONFS, OPTIONS, CACHED = {}, {}, {}, 0

-- Count one more cached value, emptying the caches first when they are full.
local function caching()
  if CACHED >= 1000 then
    NAMES, CONFS, OPTIONS, CACHED = {}, {}, {}, 0
  end
  CACHED = CACHED + 1
end

-- The info fields (see above), loaded by load_info(); WAIT_UNTIL (info.wt) is the latest end
-- of a waiting consumer's registration (-1: none; see waiters below).
local CREATED, IDLE_UNTIL, IDLE_TTL, PRUNE_AT, DUE_AT, WAIT_UNTIL = false, -1, nil, nil, nil, -1
local CONF = nil

local function bind(keys, argv)
  K_CLOCK, K_QUEUES, K_IDLE, K_INFO = keys[1], keys[2], keys[3], keys[4]
  if keys[5] then
    K_META, K_BODY, K_READY, K_DELAYED, K_RESERVED = keys[5], keys[6], keys[7], keys[8], keys[9]
    K_EXPIRY, K_DEAD, K_DEADINFO, K_SETTLED, K_ACKS = keys[10], keys[11], keys[12], keys[13],
      keys[14]
    K_DEDUP, K_DEDUPX, K_WAKE, K_WAITERS = keys[15], keys[16], keys[17], keys[18]
  else
    local names = NAMES[K_INFO]
    if not names then
      local p = string.sub(K_INFO, 1, -5)  -- '...:{tag}:' (the info key ends in 'info')
      names = {p .. 'meta', p .. 'body', p .. 'ready', p .. 'delayed', p .. 'reserved',
        p .. 'expiry', p .. 'dead', p .. 'deadinfo', p .. 'settled', p .. 'acks', p .. 'dedup',
        p .. 'dedupx', p .. 'wake', p .. 'waiters'}
      caching()
      NAMES[K_INFO] = names
    end
    K_META, K_BODY, K_READY, K_DELAYED, K_RESERVED, K_EXPIRY, K_DEAD, K_DEADINFO, K_SETTLED,
      K_ACKS, K_DEDUP, K_DEDUPX, K_WAKE, K_WAITERS = unpack(names)
  end
  NAME, SETTINGS = argv[1], argv[2]
  CLUSTER = argv[3] ~= ''
  OFFSET = CLUSTER and tonumber(argv[3]) or 0
  CONF = CONFS[SETTINGS]
  CREATED, IDLE_UNTIL, IDLE_TTL, PRUNE_AT, DUE_AT, WAIT_UNTIL = false, -1, nil, nil, nil, -1
end

-- The queue settings (ARGV[2]), parsed on first use: {max_queue_length, dedup_window,
-- dead_letter_max_age, dead_letter_max_length, entry_id_retention}.
local function conf()
  if not CONF then
    local a, b, c, d, e = string.match(SETTINGS, '^(%d+),(%d+),(%-?%d+),(%-?%d+),(%d+)$')
    CONF = {tonumber(a), tonumber(b), tonumber(c), tonumber(d), tonumber(e)}
    caching()
    CONFS[SETTINGS] = CONF
  end
  return CONF
end

-- A request's options (enqueue.lua): 'priority,delay ms,max_attempts,ttl ms,dedup key' as
-- {priority, delay, max_attempts, ttl, key or nil}.
local function request_options(raw)
  local o = OPTIONS[raw]
  if not o then
    local p, d, m, t, k = string.match(raw, '^(%d+),(%d+),(%d+),(%-?%d+),(.*)$')
    o = {tonumber(p), tonumber(d), tonumber(m), tonumber(t), k ~= '' and k or nil}
    caching()
    OPTIONS[raw] = o
  end
  return o
end

-- 2^42 ms is the year 2109: priority bands of the ready score never overlap, and the score
-- stays an exact integer in a double (below 2^53).
local BAND = 4398046511104

-- Times and scores are whole numbers below 2^53: '%d' prints them exactly, and far cheaper
-- than '%.0f' (which formats a large double digit by digit) or cjson's '%.14g'. A number
-- given to redis.call, or joined to a string with '..', is printed with '%.17g'/'%.14g'
-- (about 2,000 instructions each): the scripts pass and join strings ('1', n2s(x)).
local function n2s(x)
  return string.format('%d', x)
end

-- An entry's meta as JSON (what cjson.encode gives, keys in a fixed order, numbers as '%d').
-- An entry handed to a waiting consumer has no sequence number until it is made ready.
local function encode_meta(m)
  local out
  if m.q then
    out = string.format('{"p":%d,"a":%d,"m":%d,"q":%d,"e":%d,"s":"%s"', m.p, m.a, m.m, m.q, m.e,
      m.s)
  else
    out = string.format('{"p":%d,"a":%d,"m":%d,"e":%d,"s":"%s"', m.p, m.a, m.m, m.e, m.s)
  end
  if m.t then
    -- A reservation token is one the driver made (hex digits): it needs no JSON escaping.
    out = out .. ',"t":"' .. m.t .. '"'
  end
  if m.dl then
    out = out .. string.format(',"dl":%d', m.dl)
  end
  if m.ttl then
    out = out .. string.format(',"ttl":%d', m.ttl)
  end
  if m.x then
    out = out .. string.format(',"x":%d', m.x)
  end
  if m.k then
    out = out .. ',"k":' .. cjson.encode(m.k)
  end
  if m.l then
    out = out .. ',"l":' .. cjson.encode(m.l)
  end
  return out .. '}'
end

-- Run `cmd key ...items` in chunks (unpack has a stack limit).
local function each_chunk(cmd, key, items)
  for i = 1, #items, 1000 do
    redis.call(cmd, key, unpack(items, i, math.min(i + 999, #items)))
  end
end

-- A ready entry's meta (encode_meta's text `raw`) reserved with token `t` until `dl` (a
-- string): the text encode_meta gives for it, spliced without decoding it (cjson.decode and
-- encode_meta cost more than the rest of a reservation), and whether it has a ttl deadline
-- (its id is in K_EXPIRY then). nil if `raw` is not a ready entry's without a reservation.
-- p, a, m, q and e are numbers: the first ',"s":' is the field itself.
local function reserved_meta(raw, t, dl)
  local at = string.find(raw, ',"s":"r"', 1, true)
  if not at then
    return nil
  end
  local rest = string.sub(raw, at + 8)  -- ttl, x, k, l (strings JSON-escaped) or just '}'
  if string.sub(rest, 1, 5) == ',"t":' or string.sub(rest, 1, 6) == ',"dl":' then
    return nil
  end
  return string.sub(raw, 1, at - 1) .. ',"s":"v","t":"' .. t .. '","dl":' .. dl .. rest,
    string.find(rest, ',"x":', 1, true) ~= nil
end

local function get_meta(id)
  local raw = redis.call('HGET', K_META, id)
  if not raw then
    return nil
  end
  return cjson.decode(raw)
end

local function put_meta(id, m)
  redis.call('HSET', K_META, id, encode_meta(m))
end

-- The member of a ready entry in K_READY: its sequence number (its place among entries of the
-- same score) then its id. An entry that never was ready (handed to a waiting consumer, then
-- given back) takes its sequence number now; the caller stores its meta after.
local function ready_member(id, m)
  if not m.q then
    m.q = redis.call('HINCRBY', K_INFO, 'seq', '1')
  end
  return string.format('%012x', m.q) .. id
end

local function now_ms()
  if CLUSTER then
    local t = redis.call('TIME')
    return t[1] * 1000 + math.floor(t[2] / 1000) + OFFSET
  end
  return tta_now(K_CLOCK)
end

local function load_info()
  local v = redis.call('HMGET', K_INFO, 'created', 'idle_until', 'idle_ttl', 'pn', 'md', 'wt')
  CREATED = v[1] ~= false
  -- '+ 0' converts a numeric string once (tonumber converts it twice: it is on every call).
  IDLE_UNTIL = v[2] and v[2] + 0 or -1
  IDLE_TTL = v[3] and v[3] + 0 or nil
  PRUNE_AT = v[4] and v[4] + 0 or nil
  DUE_AT = v[5] and v[5] + 0 or nil
  WAIT_UNTIL = v[6] and v[6] + 0 or -1
end

local function exists()
  return CREATED
end

-- The earliest first score of the sorted sets `keys`, or -1 if they are all empty.
local function earliest(keys)
  local best = -1
  for _, key in ipairs(keys) do
    local first = redis.call('ZRANGE', key, '0', '0', 'WITHSCORES')
    if #first > 0 then
      local at = tonumber(first[2])
      if best < 0 or at < best then
        best = at
      end
    end
  end
  return best
end

-- Something falls due at `at` (a reservation deadline, a delayed entry, a ttl): lower the gate.
local function due_by(at)
  if DUE_AT and (DUE_AT < 0 or at < DUE_AT) then
    DUE_AT = at
    redis.call('HSET', K_INFO, 'md', n2s(at))
  end
end

-- A settled entry id or a released dedup key may be forgotten at `at`: lower the gate.
local function prune_by(at)
  if PRUNE_AT and (PRUNE_AT < 0 or at < PRUNE_AT) then
    PRUNE_AT = at
    redis.call('HSET', K_INFO, 'pn', n2s(at))
  end
end

local function live_count()
  return redis.call('ZCARD', K_READY) + redis.call('ZCARD', K_DELAYED)
    + redis.call('ZCARD', K_RESERVED)
end

-- Would `extra` new entries pass max_queue_length? meta holds every live and dead entry, so
-- its length bounds the live count from above: the exact count is only taken near the cap.
local function over_cap(extra)
  return redis.call('HLEN', K_META) + extra > conf()[1] and live_count() + extra > conf()[1]
end

-- Leave one wake-up on the queue's wake list (a waiting consumer takes it at once, so a
-- list that still holds one has no waiter to wake).
local function wake()
  if redis.call('LLEN', K_WAKE) == 0 then
    redis.call('LPUSH', K_WAKE, '1')
  end
end

-- Drop every key of the queue and its index entries; returns the entries removed.
local function drop_queue()
  local n = redis.call('HLEN', K_META)
  redis.call('DEL', K_INFO, K_META, K_BODY, K_READY, K_DELAYED, K_RESERVED, K_EXPIRY,
    K_DEAD, K_DEADINFO, K_SETTLED, K_ACKS, K_DEDUP, K_DEDUPX, K_WAKE, K_WAITERS)
  if not CLUSTER then
    redis.call('ZREM', K_QUEUES, NAME)
    redis.call('ZREM', K_IDLE, NAME)
  end
  CREATED, IDLE_UNTIL, IDLE_TTL, PRUNE_AT, DUE_AT, WAIT_UNTIL = false, -1, nil, nil, nil, -1
  return n
end

-- A queue with an idle ttl that lapsed is dropped before anything else happens to it.
local function drop_if_idle(now)
  if IDLE_UNTIL >= 0 and IDLE_UNTIL <= now then
    drop_queue()
    return true
  end
  return false
end

local function touch(now)
  if IDLE_TTL then
    local until_ = now + IDLE_TTL
    IDLE_UNTIL = until_
    redis.call('HSET', K_INFO, 'idle_until', n2s(until_))
    if not CLUSTER then
      redis.call('ZADD', K_IDLE, n2s(until_), NAME)
    end
  end
end

-- Make the queue exist; true if it did not before.
local function create()
  if CREATED or redis.call('HSETNX', K_INFO, 'created', '1') == 0 then
    CREATED = true
    return false
  end
  CREATED, PRUNE_AT, DUE_AT = true, -1, -1
  redis.call('HSET', K_INFO, 'pn', '-1', 'md', '-1')  -- a new queue holds nothing yet
  if not CLUSTER then
    redis.call('ZADD', K_QUEUES, 'NX', '0', NAME)
  end
  return true
end

-- The maintenance family (settling, dead-lettering, handing back, reclaiming) is made on first
-- use: Lua makes a closure of every function a script defines, on every run, and with the gates
-- most calls never need these. family() defines them (as f_*) in the runs that do; the
-- wrappers below, the only names the scripts use, call into it (by string keys, so that a
-- script that calls none of them leaves family() out: load_script drops unused helpers).
local FAMILY = nil
local function family()
  if FAMILY then
    return FAMILY
  end
  local function f_settle(id, token, now)
    redis.call('ZADD', K_SETTLED, n2s(now + conf()[5]), id)
    redis.call('HSET', K_ACKS, id, token)
    prune_by(now + conf()[5])
  end

  local function f_release_dedup(id, m, now)
    local key = m.k
    if not key then
      return
    end
    if redis.call('HGET', K_DEDUP, key) ~= id then
      return
    end
    local window = conf()[2]
    if window <= 0 then
      redis.call('HDEL', K_DEDUP, key)
    else
      redis.call('ZADD', K_DEDUPX, n2s(now + window), key)
      prune_by(now + window)
    end
  end

  -- Take the entry out of whichever live structure holds it.
  local function f_unlink(id, m)
    if m.s == 'r' then
      redis.call('ZREM', K_READY, ready_member(id, m))
    elseif m.s == 'd' then
      redis.call('ZREM', K_DELAYED, id)
    elseif m.s == 'v' then
      redis.call('ZREM', K_RESERVED, id)
    end
    if m.x then
      redis.call('ZREM', K_EXPIRY, id)
    end
  end

  local function f_forget(id)
    redis.call('HDEL', K_META, id)
    redis.call('HDEL', K_BODY, id)
  end

  local function f_drop_dead(id, now)
    redis.call('ZREM', K_DEAD, id)
    redis.call('HDEL', K_DEADINFO, id)
    f_forget(id)
    f_settle(id, '', now)
  end

  local function f_trim_dead(now)
    local max_age, max_length = conf()[3], conf()[4]
    if max_length >= 0 then
      local extra = redis.call('ZCARD', K_DEAD) - max_length
      if extra > 0 then
        local ids = redis.call('ZRANGE', K_DEAD, 0, extra - 1)
        for _, id in ipairs(ids) do
          f_drop_dead(id, now)
        end
      end
    end
    if max_age >= 0 then
      while true do
        local first = redis.call('ZRANGE', K_DEAD, 0, 0)
        if #first == 0 then
          break
        end
        local info = cjson.decode(redis.call('HGET', K_DEADINFO, first[1]))
        if info.at + max_age > now then
          break
        end
        f_drop_dead(first[1], now)
      end
    end
  end

  local function f_to_dead(id, m, reason, err, attempts, now)
    f_unlink(id, m)
    if err then
      m.l = err
    end
    m.s = 'x'
    m.t = nil
    m.dl = nil
    put_meta(id, m)
    local dseq = redis.call('HINCRBY', K_INFO, 'dseq', 1)
    redis.call('ZADD', K_DEAD, dseq, id)
    redis.call('HSET', K_DEADINFO, id,
      cjson.encode({r = reason, l = m.l, n = attempts, at = now}))
    f_release_dedup(id, m, now)
    f_trim_dead(now)
  end

  -- Make an unlinked entry ready at `due` or delayed until it.
  local function f_push_due(id, m, due, now)
    m.t = nil
    m.dl = nil
    if due > now then
      m.s = 'd'
      redis.call('ZADD', K_DELAYED, n2s(due), id)
      due_by(due)
    else
      m.s = 'r'
      redis.call('ZADD', K_READY, n2s((9 - m.p) * BAND + due), ready_member(id, m))
    end
    put_meta(id, m)
  end

  -- Hand a reserved entry back, due at `due`; an entry past its ttl dies instead.
  local function f_give_back(id, m, due, now)
    redis.call('ZREM', K_RESERVED, id)
    if m.x then
      if m.x <= now then
        m.s = 'r'  -- not reserved any more
        m.t = nil
        f_to_dead(id, m, 'expired', nil, m.a - 1, now)
        return
      end
      redis.call('ZADD', K_EXPIRY, n2s(m.x), id)
      due_by(m.x)
    end
    f_push_due(id, m, due, now)
  end

  -- Add a fresh (or replayed) entry: enqueued now, due after `delay`.
  local function f_admit(id, m, now, delay)
    m.q = redis.call('HINCRBY', K_INFO, 'seq', '1')
    m.e = now
    if m.ttl then
      m.x = now + m.ttl
      redis.call('ZADD', K_EXPIRY, n2s(m.x), id)
      due_by(m.x)
    else
      m.x = nil
    end
    f_push_due(id, m, now + delay, now)
  end

  local function f_exhaust(id, m, now)
    f_to_dead(id, m, 'max_attempts', nil, m.a, now)
  end

  -- Reclaim expired reservations, promote due delayed entries, expire ttl'd ones.
  -- Returns how many reservations were reclaimed.
  local function f_maintain(now)
    local reclaimed = 0
    local expired = redis.call('ZRANGE', K_RESERVED, '-inf', n2s(now), 'BYSCORE', 'WITHSCORES')
    for i = 1, #expired, 2 do
      local id, deadline = expired[i], tonumber(expired[i + 1])
      local m = get_meta(id)
      reclaimed = reclaimed + 1
      if m.a >= m.m then
        f_exhaust(id, m, now)
      else
        m.a = m.a + 1
        f_give_back(id, m, deadline, now)
      end
    end
    local due = redis.call('ZRANGE', K_DELAYED, '-inf', n2s(now), 'BYSCORE', 'WITHSCORES')
    for i = 1, #due, 2 do
      local id, at = due[i], tonumber(due[i + 1])
      local m = get_meta(id)
      redis.call('ZREM', K_DELAYED, id)
      m.s = 'r'
      redis.call('ZADD', K_READY, n2s((9 - m.p) * BAND + at), ready_member(id, m))
      put_meta(id, m)
    end
    local dying = redis.call('ZRANGE', K_EXPIRY, '-inf', n2s(now), 'BYSCORE')
    for _, id in ipairs(dying) do
      local m = get_meta(id)
      f_to_dead(id, m, 'expired', nil, m.a - 1, now)
    end
    if CREATED then
      DUE_AT = earliest({K_DELAYED, K_RESERVED, K_EXPIRY})
      redis.call('HSET', K_INFO, 'md', n2s(DUE_AT))
    end
    return reclaimed
  end

  FAMILY = {
    ['release_dedup'] = f_release_dedup,
    ['drop_dead'] = f_drop_dead,
    ['trim_dead'] = f_trim_dead,
    ['to_dead'] = f_to_dead,
    ['give_back'] = f_give_back,
    ['admit'] = f_admit,
    ['exhaust'] = f_exhaust,
    ['maintain'] = f_maintain
  }
  return FAMILY
end

-- An entry without a dedup key (the common ack) has nothing to release: no family() for it.
local function release_dedup(id, m, now)
  if m.k then
    family()['release_dedup'](id, m, now)
  end
end

local function drop_dead(...)
  return family()['drop_dead'](...)
end

local function trim_dead(...)
  return family()['trim_dead'](...)
end

local function to_dead(...)
  return family()['to_dead'](...)
end

local function give_back(...)
  return family()['give_back'](...)
end

local function admit(...)
  return family()['admit'](...)
end

local function exhaust(...)
  return family()['exhaust'](...)
end

local function maintain(...)
  return family()['maintain'](...)
end

-- maintain() when something may be due by now (the gate), else nothing: returns the same.
local function maintain_due(now)
  if DUE_AT == nil or (DUE_AT >= 0 and DUE_AT <= now) then
    return maintain(now)
  end
  return 0
end

-- Forget settled entry ids past their retention and dedup keys past their window.
-- Only when the gate says something may be due, and only on a queue that exists.
local function prune(now)
  if not CREATED or (PRUNE_AT and (PRUNE_AT < 0 or PRUNE_AT > now)) then
    return
  end
  local old = redis.call('ZRANGE', K_SETTLED, '-inf', n2s(now), 'BYSCORE')
  each_chunk('ZREM', K_SETTLED, old)
  each_chunk('HDEL', K_ACKS, old)
  local free = redis.call('ZRANGE', K_DEDUPX, '-inf', n2s(now), 'BYSCORE')
  each_chunk('ZREM', K_DEDUPX, free)
  each_chunk('HDEL', K_DEDUP, free)
  PRUNE_AT = earliest({K_SETTLED, K_DEDUPX})
  redis.call('HSET', K_INFO, 'pn', n2s(PRUNE_AT))
end

-- The current reservation for (token, id), or nil. An expired one is reclaimed on the spot.
-- `raw`: the entry's meta, when the caller read it already (false: no entry).
local function current(token, id, now, raw)
  if raw == nil then
    raw = redis.call('HGET', K_META, id)
  end
  local m = raw and cjson.decode(raw) or nil
  if not m or m.s ~= 'v' or m.t ~= token then
    return nil
  end
  if m.dl <= now then
    maintain(now)
    return nil
  end
  return m
end

-- current() for an ack: an entry without a dedup key (nothing to release) is checked on
-- encode_meta's text, without decoding it, and given as {x = whether it has a ttl deadline}.
-- Anything else (a stale or lapsed receipt, a dedup key, another text) goes to current().
local function current_to_ack(token, id, now, raw)
  if raw == nil then
    raw = redis.call('HGET', K_META, id)
  end
  if raw and not string.find(raw, ',"k":', 1, true) then
    local t, dl = string.match(raw, ',"s":"v","t":"(%x+)","dl":(%d+)')
    if t == token and dl + 0 > now then
      return {x = string.find(raw, ',"x":', 1, true) ~= nil}
    end
  end
  return current(token, id, now, raw)
end

-- Hand-off to a waiting consumer (docs/decisions/0005-redis-handoff.md; single server only).
-- A consumer about to block registers "token|visibility ms" in K_WAITERS, scored by the end of
-- its wait, and blocks on its own list K_WAKE's prefix .. 'hand:' .. token (and on K_WAKE).

local function hand_key(token)
  return string.sub(K_WAKE, 1, -5) .. 'hand:' .. token
end

-- Register a waiter until `until_` (dropping lapsed registrations on the way).
local function register_waiter(member, until_, now)
  redis.call('ZREMRANGEBYSCORE', K_WAITERS, '-inf', n2s(now))
  redis.call('ZADD', K_WAITERS, n2s(until_), member)
  if until_ > WAIT_UNTIL then
    WAIT_UNTIL = until_
    redis.call('HSET', K_INFO, 'wt', n2s(until_))
  end
end

-- The live registration whose wait ends first, taken out of the set: its token and its
-- visibility in ms (as text), or nil. One ZPOPMIN per registration looked at: lapsed ones
-- (their wait is over) come first and go.
local function take_waiter(now)
  while true do
    local first = redis.call('ZPOPMIN', K_WAITERS)
    if #first == 0 then
      WAIT_UNTIL = -1
      redis.call('HSET', K_INFO, 'wt', '-1')
      return nil
    end
    if first[2] + 0 > now then
      local member = first[1]
      local sep = string.find(member, '|', 1, true)
      return string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
    end
  end
end

-- A handed entry as one list item: '<bytes of id>:<bytes of meta>:' then id, meta and body,
-- back to back (one concatenation copies the body whole; a JSON array would scan and escape it,
-- string.format's '%s' copies it byte by byte).
local function hand_item(id, raw, body)
  return string.format('%d:%d:', #id, #raw) .. id .. raw .. body
end

-- The entry id and body of a hand_item().
local function hand_parts(item)
  local id_len, meta_len, at = string.match(item, '^(%d+):(%d+):()')
  local meta_at = at + id_len
  return string.sub(item, at, meta_at - 1), string.sub(item, meta_at + meta_len)
end

-- ZADD `pairs` (score, member, ...) to the sorted set `key`; a batch of 16 members or more
-- keeps the set a skip list. Redis keeps a small sorted set (up to zset-max-listpack-entries,
-- 128) as a listpack, where each ZADD finds and places its member by scanning it, and so does
-- each ZREM: a batch of 100 into it cost about 16,000 instructions per member. A member longer
-- than zset-max-listpack-value (64) makes it a skip list, which a ZREM never turns back: SEED
-- goes in with the batch and out at once (a smaller batch scans less than that ZREM costs).
-- SEED is longer than any member (an entry id is at most 128 bytes, a ready member 140), so it
-- is never one, and no other script sees it.
local SEED = '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~' .. '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~'
  .. '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~' .. '~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~'  -- (a literal: no library at load time)
local function zadd_many(key, pairs)
  if #pairs >= 32 then
    redis.call('ZADD', key, '0', SEED, unpack(pairs))
    redis.call('ZREM', key, SEED)
  else
    redis.call('ZADD', key, unpack(pairs))
  end
end

-- Append the pair a, b to the list (the variadic commands' arguments).
local function push(list, a, b)
  list[#list + 1] = a
  list[#list + 1] = b
end

-- Hand a new entry (`o` its request options) to a waiting consumer, if one may take it: the
-- entry is due now, a consumer is registered as waiting, nothing is ready before it and
-- nothing is due by the gate. The entry is reserved for that consumer and pushed, with its
-- meta, to the consumer's own list: its blocked BLPOP returns the delivery itself
-- (docs/decisions/0005-redis-handoff.md). Returns whether it was handed.
local function hand_off(id, body, o, now)
  if WAIT_UNTIL <= now or CLUSTER or o[2] ~= 0 or not DUE_AT or (DUE_AT >= 0 and DUE_AT <= now)
      or redis.call('ZCARD', K_READY) ~= 0 then
    return false
  end
  local token, visibility = take_waiter(now)
  if not token then
    return false
  end
  local key, ttl = o[5], o[4]
  local dl = now + visibility
  local until_ = n2s(dl)
  -- encode_meta's text for {p, a = 1, m, e = now, s = 'v', t, dl, ttl, x, k}, made in place
  -- (no table, and each number printed once: the deadline's text is the ZADD score too). No
  -- sequence number: it orders ready entries only, and ready_member() gives this one its own
  -- if it is ever given back.
  local raw = string.format('{"p":%d,"a":1,"m":%d,"e":%d,"s":"v","t":"', o[1], o[3], now)
    .. token .. '","dl":' .. until_
  if ttl >= 0 then  -- a reserved entry stays out of the expiry set (as reserve leaves it)
    raw = raw .. string.format(',"ttl":%d,"x":%d', ttl, now + ttl)
  end
  if key then
    raw = raw .. ',"k":' .. cjson.encode(key)
    redis.call('HSET', K_DEDUP, key, id)
  end
  raw = raw .. '}'
  redis.call('HSET', K_BODY, id, body)
  redis.call('HSET', K_META, id, raw)
  redis.call('ZADD', K_RESERVED, until_, id)
  due_by(dl)
  local hand = hand_key(token)
  redis.call('RPUSH', hand, hand_item(id, raw, body))
  redis.call('PEXPIRE', hand, visibility)  -- nobody popped it by then: the entry is reclaimed
  return true
end

-- Write one new entry (`o` its request options): what enqueue.lua's batch writes do for each
-- entry, one command per structure, with no list built.
local function write_one(id, body, o, now)
  local key, ttl = o[5], o[4]
  local m = {p = o[1], a = 1, m = o[3], q = redis.call('HINCRBY', K_INFO, 'seq', '1'), e = now}
  local soonest = -1  -- the earliest ttl or delay deadline
  if ttl >= 0 then
    m.ttl = ttl
    m.x = now + ttl
    redis.call('ZADD', K_EXPIRY, n2s(m.x), id)
    soonest = m.x
  end
  if key then
    m.k = key
    redis.call('HSET', K_DEDUP, key, id)
  end
  redis.call('HSET', K_BODY, id, body)
  local due = now + o[2]
  if due > now then
    m.s = 'd'
    redis.call('ZADD', K_DELAYED, n2s(due), id)
    if soonest < 0 or due < soonest then
      soonest = due
    end
  else
    m.s = 'r'
    redis.call('ZADD', K_READY, n2s((9 - m.p) * BAND + due), ready_member(id, m))
  end
  redis.call('HSET', K_META, id, encode_meta(m))
  if soonest >= 0 then
    due_by(soonest)
  end
end

-- The breakers' shared prelude, included by every breaker_*.lua script
-- (`--#include breaker_lib`).
--
-- KEYS[1] clock    STRING  milliseconds added to TIME (clock_control; absent = 0)
-- KEYS[2] breaker  HASH    state, successes, opened, changed (microseconds), failures (failure
--                          times in microseconds, comma-joined, oldest first) and one field
--                          "p:<permit>" -> lease end (microseconds) per half-open probe permit
-- KEYS[3] names    SET     every breaker name used in the namespace
-- ARGV[1] name; the configuration travels with each call: ARGV[2] failure_threshold,
-- ARGV[3] window in microseconds ("" = consecutive failures), ARGV[4] recovery_timeout,
-- ARGV[5] half_open_max_calls, ARGV[6] success_threshold, ARGV[7] probe_timeout (microseconds).
-- Every script answers with decision(...): allowed, permit, state, failures, successes,
-- permits in use, opened, changed, retry_after (microseconds), and the transition's from, to
-- and at ("" where there is none).
local K_CLOCK, K_BREAKER, K_NAMES = KEYS[1], KEYS[2], KEYS[3]
local NAME = ARGV[1]
local THRESHOLD = tonumber(ARGV[2])
local WINDOW = tonumber(ARGV[3])
local RECOVERY = tonumber(ARGV[4])
local MAX_CALLS = tonumber(ARGV[5])
local SUCCESS_THRESHOLD = tonumber(ARGV[6])
local PROBE = tonumber(ARGV[7])

local function fmt(n)
  if n == nil then
    return ''
  end
  return string.format('%d', n)
end

-- The backend's clock in microseconds: the server's TIME plus the namespace's offset.
local function now_us()
  local t = redis.call('TIME')
  local offset = math.floor(tonumber(redis.call('GET', K_CLOCK) or '0') * 1000)
  return tonumber(t[1]) * 1000000 + tonumber(t[2]) + offset
end

-- The breaker's state, with the permits whose lease ended at or before now left out.
local function load(now)
  local b = {state = 'closed', successes = 0, failures = {}, permits = {}, npermits = 0}
  local raw = redis.call('HGETALL', K_BREAKER)
  for i = 1, #raw, 2 do
    local field, value = raw[i], raw[i + 1]
    if field == 'state' then
      b.state = value
    elseif field == 'successes' then
      b.successes = tonumber(value)
    elseif field == 'opened' then
      b.opened = tonumber(value)
    elseif field == 'changed' then
      b.changed = tonumber(value)
    elseif field == 'failures' then
      for t in string.gmatch(value, '%d+') do
        b.failures[#b.failures + 1] = tonumber(t)
      end
    elseif string.sub(field, 1, 2) == 'p:' then
      local ends = tonumber(value)
      if ends > now then
        b.permits[string.sub(field, 3)] = ends
        b.npermits = b.npermits + 1
      end
    end
  end
  return b
end

-- Write the whole state back (a handful of fields) and index the name.
local function save(b)
  redis.call('DEL', K_BREAKER)
  local times = {}
  for i, t in ipairs(b.failures) do
    times[i] = fmt(t)
  end
  local args = {'HSET', K_BREAKER, 'state', b.state, 'successes', fmt(b.successes),
                'failures', table.concat(times, ',')}
  if b.opened then
    args[#args + 1] = 'opened'
    args[#args + 1] = fmt(b.opened)
  end
  if b.changed then
    args[#args + 1] = 'changed'
    args[#args + 1] = fmt(b.changed)
  end
  for permit, ends in pairs(b.permits) do
    args[#args + 1] = 'p:' .. permit
    args[#args + 1] = fmt(ends)
  end
  redis.call(unpack(args))
  redis.call('SADD', K_NAMES, NAME)
end

local function failure_count(b, now)
  if WINDOW == nil then
    return #b.failures
  end
  local since = now - WINDOW
  local n = 0
  for _, t in ipairs(b.failures) do
    if t >= since then
      n = n + 1
    end
  end
  return n
end

local function retry_after(b, now)
  if b.state == 'open' then
    local left = b.opened + RECOVERY - now
    if left > 0 then
      return left
    end
    return nil
  end
  if b.state == 'half_open' and b.npermits >= MAX_CALLS then
    return 0
  end
  return nil
end

-- Change state; returns the transition {from, to, at}.
local function move(b, to, now)
  local transition = {b.state, to, now}
  b.state = to
  b.changed = now
  b.successes = 0
  b.permits = {}
  b.npermits = 0
  if to == 'open' then
    b.opened = now
  elseif to == 'closed' then
    b.opened = nil
    b.failures = {}
  end
  return transition
end

local function decision(allowed, permit, b, now, transition)
  local t = transition or {}
  return {allowed and '1' or '0', permit or '', b.state, fmt(failure_count(b, now)),
          fmt(b.successes), fmt(b.npermits), fmt(b.opened), fmt(b.changed),
          fmt(retry_after(b, now)), t[1] or '', t[2] or '', fmt(t[3])}
end

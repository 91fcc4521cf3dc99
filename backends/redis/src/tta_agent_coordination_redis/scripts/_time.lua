-- The backend's clock in milliseconds: the server's TIME plus the namespace's clock offset
-- (a key only test fixtures set, through backend.clock.advance). No client clock decides a
-- deadline. `clock_key` must be one of the script's KEYS.
local function tta_now(clock_key)
  local t = redis.call('TIME')
  -- Arithmetic converts the replies' numeric strings, once each (tonumber converts twice).
  return t[1] * 1000 + math.floor(t[2] / 1000) + (redis.call('GET', clock_key) or 0)
end

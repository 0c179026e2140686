-- lib.lua: functions shared by reserve.lua, settle.lua and usage.lua.
--
-- Not a script of its own: the store prepends this text to each of those scripts when it
-- registers them, so it has no KEYS or ARGV. Every key it touches is a reservation record
-- of the caller's scope or a counter named in one, hence lives in the caller's slot
-- (undeclared keys of the script's own slot are allowed; scripts carry no flags).
--
-- Units: counter amounts are whole units (micro-dollars for cost_usd). They travel as
-- decimal strings and are Lua numbers (doubles) only for arithmetic, exact below 2^53.
-- Times are unix milliseconds.
--
-- Reservation record (hash r:{S}:<id>):
--   state       open | expired | committed | released
--   charges     JSON [[counter_key, metric, ask, window, window_id, resets_at, expire_at, cap, block], ...]
--               (ask, cap, block in units, as strings; resets_at/expire_at unix seconds)
--   snapshot    JSON {counter_key: [used, held]} before the reservation
--   meta        JSON {string: string}
--   created_ms, expires_ms, settled_ms (unix ms); has_global "1"/"0"; request (request key or "")
--   actual      JSON {metric: units} of the commit

local function num(value)
  return tonumber(value) or 0
end

-- Adds delta (units, may be negative) to one field of a counter hash; a result below 0
-- (only after an admin reset) is clamped to 0, so a refund never creates spare capacity.
local function bump(key, field, delta)
  if delta == 0 then
    return
  end
  local value = redis.call('HINCRBY', key, field, delta)
  if value < 0 then
    redis.call('HSET', key, field, 0)
  end
end

-- The earliest expiry (unix ms) any key may get: Redis' own clock plus the grace period
-- (at least a minute). Expiries are computed from the service's now_ms, which may be skewed
-- against Redis (or be a test's manual clock): no key may be born already expired.
local function expiry_floor(grace_ms)
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + math.max(grace_ms, 60000)
end

-- used and held of a counter, as strings ("0" when absent).
local function read_counter(key)
  local v = redis.call('HMGET', key, 'used', 'held')
  return v[1] or '0', v[2] or '0'
end

-- Settles one reservation record. mode: 'expire' (open -> expired, at its estimate),
-- 'commit' (actual: {metric: units}) or 'release'.
--   open    + expire : held -= ask, used += ask
--   open    + commit : held -= ask, used += actual
--   open    + release: held -= ask
--   expired + commit : used += actual - ask
--   expired + release: used -= ask
--   committed / released: nothing (and expired + expire: nothing)
-- A counter key that no longer exists belongs to a window that has ended (or was reset):
-- it is left alone rather than recreated without a TTL.
-- Returns the state before ('' when the record does not exist) and the charges JSON.
local function settle_record(rkey, zkey, rid, mode, actual, now_ms, grace_ms)
  local f = redis.call('HMGET', rkey, 'state', 'charges', 'expires_ms')
  local state = f[1]
  if not state then
    redis.call('ZREM', zkey, rid)
    return '', '[]'
  end
  if state == 'committed' or state == 'released' or (state == 'expired' and mode == 'expire') then
    return state, f[2]
  end
  for _, c in ipairs(cjson.decode(f[2])) do
    local key, metric, ask = c[1], c[2], num(c[3])
    if redis.call('EXISTS', key) == 1 then
      local actual_units = 0
      if mode == 'commit' then
        actual_units = num(actual[metric])
      end
      if state == 'open' then
        bump(key, 'held', -ask)
        if mode == 'expire' then
          bump(key, 'used', ask)
        else
          bump(key, 'used', actual_units)
        end
      else
        bump(key, 'used', actual_units - ask)
      end
    end
  end
  local new_state = 'released'
  if mode == 'expire' then
    new_state = 'expired'
  elseif mode == 'commit' then
    new_state = 'committed'
    redis.call('HSET', rkey, 'actual', cjson.encode(actual))
  end
  redis.call('HSET', rkey, 'state', new_state, 'settled_ms', now_ms)
  redis.call('ZREM', zkey, rid)
  -- A settled record stays for the grace period, so a late commit or release still finds it.
  redis.call('PEXPIREAT', rkey,
    math.max(math.max(num(now_ms), num(f[3])) + num(grace_ms), expiry_floor(num(grace_ms))))
  return state, f[2]
end

-- Settles at their estimate up to `limit` open reservations of this scope whose
-- expires_ms <= now_ms. Returns how many it looked at.
local function sweep_expired(zkey, record_prefix, now_ms, grace_ms, limit)
  local ids = redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms, 'LIMIT', 0, limit)
  for _, rid in ipairs(ids) do
    settle_record(record_prefix .. rid, zkey, rid, 'expire', nil, now_ms, grace_ms)
  end
  return #ids
end


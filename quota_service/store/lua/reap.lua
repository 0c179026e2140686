-- reap.lua: settle at their estimate the reservations of ONE slot whose TTL has passed,
-- without waiting for their subject's next request. (The store prepends lib.lua: sweep_expired,
-- which appends each EXPIRED usage record to the outbox in the same step.)
--
-- Every reserve step that opens a record adds its scope to the slot's due index, scored by the
-- earliest expiry (ZADD LT). The service's reaper (quota_service/server/usage_relay.py) calls
-- this about every second per slot that has one: an abandoned reservation is recorded EXPIRED
-- within about a second of its TTL.
--
-- KEYS[1]  e:{T}   the due index of the slot: zset scope -> earliest open expiry (unix ms)
-- KEYS[2]  x:{T}   the outbox stream of the slot
--
-- ARGV[1]  now_ms        unix ms
-- ARGV[2]  grace_ms      as reserve.lua's
-- ARGV[3]  sweep_limit   at most this many reservations settled per scope and call
-- ARGV[4]  max_scopes    at most this many scopes per call
--
-- Every other key touched is a scope's (z:{S}:open, r:{S}:..., q:{S}:...): the due index of a
-- slot names only scopes of that slot, so they are keys of this script's slot.
--
-- Returns {scopes_swept, scopes_still_due}: the second is how many scopes remain due now
-- (the caller calls again at once when it is above 0).

local now_ms, grace_ms, sweep_limit = num(ARGV[1]), num(ARGV[2]), num(ARGV[3])
local due = on_key('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, num(ARGV[4]))
for _, scope in ipairs(due) do
  local tag = '{' .. scope .. '}'
  local open_key = key_of(KEY.OPEN, tag, 'open')
  sweep_expired(outbox_ctx(
    {tag = tag, open_key = open_key, now_ms = now_ms, grace_ms = grace_ms, sweep_limit = sweep_limit,
     keep = tag ~= GLOBAL_TAG},
    KEYS[2]
  ))
  local next_due = on_key('ZRANGE', open_key, 0, 0, 'WITHSCORES')
  if #next_due == 0 then
    redis.call('ZREM', KEYS[1], scope)
  else
    redis.call('ZADD', KEYS[1], next_due[2], scope)
  end
end
return {#due, redis.call('ZCOUNT', KEYS[1], '-inf', now_ms)}

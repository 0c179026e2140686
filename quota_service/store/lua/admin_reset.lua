-- admin_reset.lua: zero the committed usage of counters of ONE subject (one slot), atomically.
--
-- KEYS[1..n]  q:{S}:<metric>:<window>:<window_id>   counter hashes ("used", "held", in units)
--
-- No ARGV. For each key that exists with used > 0: used := 0. "held" (open reservations)
-- is never touched, so a later commit or release of them still lands correctly (lib.lua
-- clamps a counter that would go below 0 after such a reset to 0). Keys that no longer
-- exist are left alone (never recreated without their expiry).
--
-- Returns flat {key_1, used_before_1, key_2, used_before_2, ...} (strings, units) for the
-- counters that were zeroed.

local reset = {}
for i = 1, #KEYS do
  -- kept as the stored text: tostring() of a large Lua number would print 1e+15
  local used = redis.call('HGET', KEYS[i], 'used') or '0'
  if (tonumber(used) or 0) > 0 then
    redis.call('HSET', KEYS[i], 'used', 0)
    reset[#reset + 1] = KEYS[i]
    reset[#reset + 1] = used
  end
end
return reset

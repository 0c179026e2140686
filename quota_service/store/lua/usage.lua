-- usage.lua: current values of counters of ONE scope, after settling its expired reservations.
-- (The store prepends lib.lua, whose functions this script calls: num, read_counter,
-- settle_record, sweep_expired, expiry_floor.)
--
-- KEYS[1]      z:{S}:open   zset of open reservation ids, score = expires_ms (unix ms)
-- KEYS[2..]    q:{S}:...    counter hashes (fields "used", "held", in units)
--
-- ARGV[1]  now_ms          unix ms: reservations with expires_ms <= now_ms are settled at their estimate
-- ARGV[2]  grace_ms        ms a settled record is kept after its expiry
-- ARGV[3]  sweep_limit     at most this many expired reservations are settled per call
-- ARGV[4]  record_prefix   "r:{S}:" (record key of an id = prefix .. id)
--
-- Returns flat {used_1, held_1, used_2, held_2, ...} (strings, units) for KEYS[2..].

sweep_expired(KEYS[1], ARGV[4], ARGV[1], num(ARGV[2]), num(ARGV[3]))
local values = {}
for i = 2, #KEYS do
  local used, held = read_counter(KEYS[i])
  values[2 * (i - 1) - 1] = used
  values[2 * (i - 1)] = held
end
return values

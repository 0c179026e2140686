-- usage.lua: current values of counters of ONE scope, after settling its expired reservations.
-- (The store prepends lib.lua, whose functions this script calls: sweep_expired, read_counter.)
--
-- KEYS[1]      z:{S}:open   zset of open record names, score = expires_ms (unix ms)
-- KEYS[2]      x:{T}        the outbox stream of S's slot (the sweep appends EXPIRED records;
--                           any other key of the slot when the service keeps no ledger)
-- KEYS[3..]    q:{S}:...    counter hashes (fields "used", "held", in units)
--
-- ARGV[1]  tag             "{S}": the hash tag the records' keys are built from
-- ARGV[2]  now_ms          unix ms: reservations with expires_ms <= now_ms are settled at their estimate
-- ARGV[3]  grace_ms        ms a settled record is kept after its expiry
-- ARGV[4]  sweep_limit     at most this many expired reservations are settled per call
--
-- Returns flat {used_1, held_1, used_2, held_2, ...} (strings, units) for KEYS[3..].

sweep_expired(outbox_ctx({tag = ARGV[1], open_key = KEYS[1], now_ms = num(ARGV[2]), grace_ms = num(ARGV[3]),
  sweep_limit = num(ARGV[4])}, KEYS[2]))
local values = {}
for i = 3, #KEYS do
  local used, held = read_counter(KEYS[i])
  values[#values + 1] = used
  values[#values + 1] = held
end
return values

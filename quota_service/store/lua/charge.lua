-- charge.lua: write back ONE grant a replica made while the store was unreachable (fail-open
-- within the tier's allowance, on_store_error: allow): add its amounts to the counters of ONE
-- scope and, in a subject's scope, append its usage record (COMMITTED at the estimate, mode
-- "fail_open") to the outbox, once: a retry after a lost reply changes nothing.
-- (The store prepends lib.lua.)
--
-- KEYS[1]      f:{S}:<name>   the grant's marker (written here, kept for ARGV[3])
-- KEYS[2]      x:{T}          the outbox of S's slot (any other key of the slot: no ledger)
-- KEYS[3..]    q:{S}:...      the counters the grant charges
--
-- ARGV[1]  tag        "{S}"
-- ARGV[2]  keep_ms    unix ms until which the marker is kept (at least Redis' clock + a minute)
-- ARGV[3]  name       the grant's record name   ARGV[4] generation
-- ARGV[5]  head       the request's head (reserve.lua ARGV[15])
-- ARGV[6]  estimate   amounts "<metric>=<units> ..." (what is charged, cost_usd included)
-- ARGV[7]  at_ms      when it was granted (unix ms): the record's time
-- ARGV[8..] two per counter of KEYS[3..]: units to add to "used", the counter's expiry (unix s)
--
-- Returns 1 when charged now, 0 when it had been already.

local ctx = outbox_ctx({tag = ARGV[1]}, KEYS[2])
if redis.call('SET', KEYS[1], '1', 'NX', 'PXAT', math.max(num(ARGV[2]), expiry_floor(60000))) == false then
  return 0
end
for i = 3, #KEYS do
  local at = 8 + 2 * (i - 3)
  local amount = num(ARGV[at])
  if amount ~= 0 then
    local exists = redis.call('EXISTS', KEYS[i]) == 1
    local used = bump(KEYS[i], 'used', amount)
    if not exists then
      redis.call('PEXPIREAT', KEYS[i], math.max(num(ARGV[at + 1]) * 1000, expiry_floor(60000)))
    end
    note_used(ctx, KEYS[i], string.match(KEYS[i], '^[^}]*}:(.*)$'), used)
  end
end
local rec = {gen = ARGV[4], head = ARGV[5], estimate = ARGV[6], created_ms_text = ARGV[7], expires_ms_text = '',
  decision = 'a'}
record_usage(ctx, ENTRY.COMMITTED, ARGV[3], rec, num(ARGV[7]), 'fail_open', ARGV[6])
return 1

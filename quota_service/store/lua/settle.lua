-- settle.lua: commit or release ONE reservation of one scope (a subject, or __global__).
-- (The store prepends lib.lua, whose functions this script calls: num, read_counter,
-- settle_record, sweep_expired, expiry_floor.)
--
-- KEYS[1]  r:{S}:<rid>   the reservation record hash
-- KEYS[2]  z:{S}:open    zset of open reservation ids, score = expires_ms (unix ms)
-- KEYS[3]  i:{S}:<id>    the request key of the reservation; written only when ARGV[6] = "1"
--
-- ARGV[1]  mode             "commit" | "release"
-- ARGV[2]  now_ms           unix ms
-- ARGV[3]  grace_ms         ms a settled record is kept after max(now_ms, expires_ms)
-- ARGV[4]  actual           JSON {metric: units (string)}; a metric left out counts 0 ("{}" for release)
-- ARGV[5]  rid              the reservation id (member of KEYS[2])
-- ARGV[6]  mark             "0": plain commit or release.
--                           "1": compensation for a global denial; besides releasing, the
--                           recorded answer under KEYS[3] becomes denied_global with ARGV[7].
--                           "2": withdraw (mode release): the caller was answered DENY after a
--                           store failure, so the reservation is released and its request key
--                           deleted (a repeat of the request_id is decided afresh); unless a
--                           replay has handed the reservation out since (record field
--                           "replayed"), then nothing changes and the outcome is "kept".
-- ARGV[7]  global_snapshot  JSON {counter_key: [used, held]} of the global step that denied
--
-- State changes (see lib.lua settle_record): open -> commit: used += actual, held -= ask;
-- open -> release: held -= ask; expired -> commit: used += actual - ask;
-- expired -> release: used -= ask; committed/released: nothing.
--
-- Returns {outcome, state_before, charges, has_global, values}:
--   outcome       settled | already_settled | missing | kept (withdraw only)
--   charges       the record's charges JSON ("[]" when missing)
--   has_global    "1" when the reservation also holds on __global__ counters
--   values        flat {used_1, held_1, ...} (strings, units) of the charges' counters after settling

local mode = ARGV[1]
if ARGV[6] == '2' and redis.call('HGET', KEYS[1], 'replayed') == '1' then
  return {'kept', 'open', '[]', '0', {}}
end
local state, charges = settle_record(KEYS[1], KEYS[2], ARGV[5], mode, cjson.decode(ARGV[4]), ARGV[2],
  ARGV[3])
if state == '' then
  return {'missing', '', '[]', '0', {}}
end

if ARGV[6] == '1' then
  redis.call('HSET', KEYS[1], 'denied_global', ARGV[7])
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local answer = cjson.decode(prior)
    answer.st = 'denied_global'
    answer.rid = ''
    answer.gsnap = ARGV[7]
    redis.call('SET', KEYS[3], cjson.encode(answer), 'KEEPTTL')
  end
elseif ARGV[6] == '2' and (state == 'open' or state == 'expired') then
  local prior = redis.call('GET', KEYS[3])
  if prior and cjson.decode(prior).rid == ARGV[5] then
    redis.call('DEL', KEYS[3])
  end
end

local values = {}
for i, c in ipairs(cjson.decode(charges)) do
  local used, held = read_counter(c[1])
  values[2 * i - 1] = used
  values[2 * i] = held
end
local outcome = 'settled'
if state == 'committed' or state == 'released' then
  outcome = 'already_settled'
end
return {outcome, state, charges, redis.call('HGET', KEYS[1], 'has_global') or '0', values}

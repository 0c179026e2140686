-- design_reserve.lua: the design floor's one script per call, of the same shape as
-- quota_service/store/lua/reserve.lua (same KEYS and ARGV layout, same reads and writes
-- on the happy path), without the shared library: the expiry sweep is a bare
-- ZRANGEBYSCORE (nothing is due during a benchmark) and replays are not decoded.
--
-- KEYS[1] z:{S}:open  KEYS[2] i:{S}:<request_id>  KEYS[3] r:{S}:<rid>  KEYS[4] c:{S}
-- KEYS[5..4+n] q:{S}:<metric>:<window>:<window_id>   counter hashes (used, held)
-- ARGV[1] now_ms  ARGV[2] rid  ARGV[3] expires_ms  ARGV[4] grace_ms  ARGV[5] sweep_limit
-- ARGV[6] record_prefix  ARGV[7] idempotent  ARGV[8] dry_run  ARGV[9] config_version
-- ARGV[10] meta  ARGV[11] has_global
-- ARGV[12] charges JSON [[key, metric, ask, window, window_id, resets_at, expire_at, cap, block], ...]

local function num(value)
  return tonumber(value) or 0
end

local now_ms = ARGV[1]
local rid = ARGV[2]
local expires_ms = num(ARGV[3])
local grace_ms = num(ARGV[4])
local idempotent = ARGV[7] == '1'
local dry_run = ARGV[8] == '1'
local n = #KEYS - 4
local charges = cjson.decode(ARGV[12])

redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms, 'LIMIT', 0, num(ARGV[5]))

local current = {}
local flat = {}
for i = 1, n do
  local v = redis.call('HMGET', KEYS[4 + i], 'used', 'held')
  local used, held = v[1] or '0', v[2] or '0'
  current[i] = {used, held}
  flat[2 * i - 1] = used
  flat[2 * i] = held
end

if idempotent and not dry_run then
  local prior = redis.call('GET', KEYS[2])
  if prior then
    return {'replayed', '', '0', '1', flat, ''}
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
  local c = charges[i]
  local ask, cap, block = num(c[3]), num(c[8]), num(c[9])
  local uh = num(current[i][1]) + num(current[i][2])
  if ask > 0 and (uh >= block or uh + ask > cap) then
    denied = true
  end
end

if dry_run then
  return {'checked', '', '0', '0', flat, ''}
end
if denied then
  return {'denied', '', ARGV[3], '0', flat, ''}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'duplicate', rid, ARGV[3], '0', flat, ''}
end

local snapshot = {}
for i = 1, n do
  snapshot[KEYS[4 + i]] = current[i]
end
local answer_expiry = expires_ms + grace_ms
local record_expiry = answer_expiry
for i = 1, n do
  local c = charges[i]
  local key_expiry = num(c[7]) * 1000
  if num(c[3]) > 0 then
    redis.call('HINCRBY', KEYS[4 + i], 'held', c[3])
    redis.call('PEXPIREAT', KEYS[4 + i], key_expiry)
    record_expiry = math.max(record_expiry, key_expiry)
  end
end

redis.call('HSET', KEYS[3],
  'state', 'open',
  'charges', ARGV[12],
  'snapshot', cjson.encode(snapshot),
  'meta', ARGV[10],
  'created_ms', now_ms,
  'expires_ms', ARGV[3],
  'has_global', ARGV[11],
  'request', KEYS[2])
redis.call('PEXPIREAT', KEYS[3], record_expiry)

redis.call('ZADD', KEYS[1], ARGV[3], rid)
local open_expiry = redis.call('PEXPIRETIME', KEYS[1])
if open_expiry >= 0 and open_expiry < record_expiry or open_expiry == -1 then
  redis.call('PEXPIREAT', KEYS[1], record_expiry)
end

if idempotent then
  redis.call('SET', KEYS[2], cjson.encode({st = 'reserved', rid = rid, exp = ARGV[3], snap = snapshot}),
    'PXAT', answer_expiry)
end
return {'reserved', rid, ARGV[3], '0', flat, ''}

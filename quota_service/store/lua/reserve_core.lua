-- reserve_core.lua: reserve_one(KEYS, ARGV), the body of reserve.lua as a function, so that
-- reserve.lua (one step) and reserve_batch.lua (several, one after the other, in one
-- script call) share one implementation. Not a script of its own: the store prepends it
-- (after lib.lua) to those two scripts. KEYS and ARGV are exactly those documented in
-- reserve.lua; the function returns what reserve.lua returns.

-- KEYS and ARGV by name (see reserve.lua's header).
local function reserve_args(KEYS, ARGV)
  local _, layouts = first_line(ARGV[13])
  local own_layout, global_layout = first_line(layouts)
  local a = {
    record_key = KEYS[1], open_key = KEYS[2], config_key = KEYS[3], plan_key = KEYS[4], layout_key = KEYS[5],
    overrides_key = KEYS[6],
    step = ARGV[1], tag = ARGV[2], now_ms = num(ARGV[3]), name = ARGV[4], gen = ARGV[5],
    expires_ms = num(ARGV[6]), grace_ms = num(ARGV[7]), sweep_limit = num(ARGV[8]),
    request = ARGV[9] == YES, has_global = ARGV[10] == YES, config_version = ARGV[11],
    plan = ARGV[12], own_layout = own_layout, global_layout = global_layout, estimate = ARGV[14],
    plan_digest = '', layout_digest = '', counters = {},
  }
  if a.step == STEP.SUBJECT then
    a.plan_digest = string.match(KEYS[4], '[^:]*$')
    a.layout_digest = string.match(KEYS[5], '[^:]*$')
  end
  for i = 1, #KEYS - 6 do
    local at = 15 + 4 * (i - 1)
    a.counters[i] = {
      key = KEYS[6 + i], ask = num(ARGV[at]), cap = num(ARGV[at + 1]), block = num(ARGV[at + 2]),
      expire_at_ms = num(ARGV[at + 3]) * 1000,
    }
  end
  return a
end

-- Reads used and held of every counter (a.flat: the reply's values; a.values: recorded form).
local function read_counters(a)
  a.flat = {}
  for i, c in ipairs(a.counters) do
    c.used, c.held, c.exists = read_counter(c.key)
    a.flat[2 * i - 1] = c.used
    a.flat[2 * i] = c.held
  end
  a.values = table.concat(a.flat, ',')
end

local function reply(a, status)
  return {status, a.gen, int_text(a.expires_ms), NO, a.flat, '', '', '', '', NO, ''}
end

-- The recorded answer of an existing record: never re-judged, never changes the
-- reservation (an open one past its expiry is settled at its estimate first, as any
-- touch of the scope would). A subject record handed out by a replay is marked, so that
-- a withdraw (after a store failure) leaves it alone. The record's estimate comes back
-- with it (an open or expired record's amounts, a tombstone's units): the asks of the
-- first decision are per request, so the shared plan text does not hold them.
local function answer_replay(a, ctx, rec)
  if not rec.tomb and rec.state == STATE.OPEN and rec.expires_ms <= a.now_ms then
    settle_record(ctx, a.record_key, a.name, rec, SETTLE.EXPIRE, nil)
    rec.state = STATE.EXPIRED
  end
  if a.step == STEP.SUBJECT and not rec.tomb then
    redis.call('HSET', a.record_key, FIELD.REPLAYED, YES)
  end
  local status = STATUS.RESERVED
  if rec.state == STATE.DENIED then
    status = STATUS.DENIED
  elseif rec.state == STATE.DENIED_GLOBAL then
    status = STATUS.DENIED_GLOBAL
  end
  local plan_digest, layout
  if rec.tomb then
    plan_digest, layout = tombstone_layout(a.tag, a.record_key, rec)
  else
    plan_digest, layout = rec.plan, rec.layout .. '\n' .. rec.glayout
  end
  local plan = named_text(a.tag, KEY.PLAN, plan_digest, a.record_key)
  return {status, rec.gen, rec.expires_ms_text, YES, a.flat, rec.values, plan, layout, rec.state,
    rec.has_global and YES or NO, rec.estimate or ''}
end

-- The subject's config as config_get.lua reads it ({tier, has_tier, version, overrides flat}),
-- for a STALE_CONFIG answer: the caller plans again on it without a round trip of its own.
-- (Expired overrides are left for config_get.lua to delete; the caller skips them.)
local function config_now(a)
  local tier = on_key('HGET', a.config_key, 'tier')
  local version = on_key('HGET', a.config_key, 'version') or '0'
  return {tier or '', tier and YES or NO, version, on_key('HGETALL', a.overrides_key)}
end

local function config_is_current(a)
  if a.config_version == '' then
    return true
  end
  return (on_key('HGET', a.config_key, 'version') or '0') == a.config_version
end

-- The DENY half of the decision rule, per counter with ask > 0 and uh = used + held:
-- deny when uh >= block or uh + ask > cap.
local function gate_denies(a)
  for _, c in ipairs(a.counters) do
    local uh = num(c.used) + num(c.held)
    if c.ask > 0 and (uh >= c.block or uh + c.ask > c.cap) then
      return true
    end
  end
  return false
end

-- A request_id's denial, kept for its replays as a tombstone (expires_ms: when the
-- reservation would have expired; the answer is kept for the grace period after it).
local function record_denial(a, ctx)
  local rec = {
    has_global = false, gen = '', expires_ms_text = int_text(a.expires_ms), plan = a.plan_digest,
    ldigest = a.layout_digest, estimate = a.estimate, layout = a.own_layout, glayout = a.global_layout,
  }
  if a.plan_digest ~= '' then
    keep_text(a.plan_key, a.plan, settled_expiry(rec, a.now_ms, a.grace_ms))
  end
  write_tombstone(ctx, a.record_key, rec, TOMBSTONE.DENIED, a.values)
end

-- Holds every ask on its counter; returns how long the record must live (unix ms): as
-- long as the counters it holds on, so the expiry sweep always finds it while there is
-- something to settle, and at least the grace period after its expiry.
local function hold(a)
  local floor_ms = expiry_floor(a.grace_ms)
  local record_expiry = math.max(a.expires_ms + a.grace_ms, floor_ms)
  for _, c in ipairs(a.counters) do
    if c.ask > 0 then
      local key_expiry = math.max(c.expire_at_ms, floor_ms)
      on_key('HINCRBY', c.key, 'held', c.ask)
      -- Every writer gives a counter the same expiry (its window's end plus the retention),
      -- set when it is created: an existing counter needs it again only where the floor
      -- (Redis' clock plus the grace period) is later than that.
      if not c.exists or c.expire_at_ms < floor_ms then
        redis.call('PEXPIREAT', c.key, key_expiry)
      end
      record_expiry = math.max(record_expiry, key_expiry)
    end
  end
  return record_expiry
end

local function record_reservation(a, record_expiry)
  local asks = {}
  for i, c in ipairs(a.counters) do
    asks[i] = int_text(c.ask)
  end
  local fields = {
    FIELD.STATE, STATE.OPEN, FIELD.GENERATION, a.gen, FIELD.CREATED_MS, int_text(a.now_ms),
    FIELD.EXPIRES_MS, int_text(a.expires_ms), FIELD.LAYOUT, a.own_layout, FIELD.ASKS, table.concat(asks, ','),
    FIELD.GLOBAL, a.has_global and YES or NO,
  }
  local optional = {
    {FIELD.GLOBAL_LAYOUT, a.global_layout}, {FIELD.ESTIMATE, a.estimate}, {FIELD.PLAN, a.plan_digest},
    {FIELD.LAYOUT_DIGEST, a.layout_digest},
  }
  if a.request then
    optional[#optional + 1] = {FIELD.VALUES, a.values}
    optional[#optional + 1] = {FIELD.REQUEST, YES}
  end
  for _, pair in ipairs(optional) do
    if pair[2] ~= '' then
      fields[#fields + 1] = pair[1]
      fields[#fields + 1] = pair[2]
    end
  end
  redis.call('HSET', a.record_key, unpack(fields))
  redis.call('PEXPIREAT', a.record_key, record_expiry)
  on_key('ZADD', a.open_key, a.expires_ms, a.name)
  extend_expiry(a.open_key, record_expiry)
  if a.plan_digest ~= '' then
    keep_text(a.plan_key, a.plan, record_expiry)
  end
end

-- Order: settle expired -> replay (the record) -> config version -> gates -> write.
-- Everything is checked before anything is written (Redis does not roll a script back).
local function reserve_one(KEYS, ARGV)
  local a = reserve_args(KEYS, ARGV)
  local ctx = {
    tag = a.tag, open_key = a.open_key, now_ms = a.now_ms, grace_ms = a.grace_ms, sweep_limit = a.sweep_limit,
    keep = a.step == STEP.SUBJECT,
  }
  sweep_expired(ctx)
  read_counters(a)
  if a.step ~= STEP.DRY_RUN then
    local rec = load_record(a.record_key)
    if rec then
      if a.step == STEP.SUBJECT and not a.request then
        return reply(a, STATUS.DUPLICATE)
      end
      return answer_replay(a, ctx, rec)
    end
    if a.step == STEP.GLOBAL_REPLAY then
      return reply(a, STATUS.MISSING)
    end
  end
  if not config_is_current(a) then
    local stale = reply(a, STATUS.STALE_CONFIG)
    stale[12] = config_now(a)
    return stale
  end
  local denied = gate_denies(a)
  if a.step == STEP.DRY_RUN then
    return reply(a, STATUS.CHECKED)
  end
  if denied then
    if a.request then
      record_denial(a, ctx)
    end
    return reply(a, STATUS.DENIED)
  end
  record_reservation(a, hold(a))
  return reply(a, STATUS.RESERVED)
end

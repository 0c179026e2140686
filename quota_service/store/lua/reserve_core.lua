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
    overrides_key = KEYS[6], outbox_key = KEYS[7], due_key = KEYS[8],
    step = ARGV[1], tag = ARGV[2], now_ms = num(ARGV[3]), name = ARGV[4], gen = ARGV[5],
    expires_ms = num(ARGV[6]), grace_ms = num(ARGV[7]), sweep_limit = num(ARGV[8]),
    request = ARGV[9] == YES, has_global = ARGV[10] == YES, config_version = ARGV[11],
    plan = ARGV[12], own_layout = own_layout, global_layout = global_layout, estimate = ARGV[14],
    head = ARGV[15], lines = ARGV[16], outbox_cap = num(ARGV[17]),
    plan_digest = '', layout_digest = '', counters = {},
  }
  if a.step == STEP.SUBJECT then
    a.plan_digest = string.match(KEYS[4], '[^:]*$')
    a.layout_digest = string.match(KEYS[5], '[^:]*$')
  end
  for i = 1, #KEYS - 8 do
    local at = 18 + 4 * (i - 1)
    a.counters[i] = {
      key = KEYS[8 + i], ask = num(ARGV[at]), cap = num(ARGV[at + 1]), block = num(ARGV[at + 2]),
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

-- The asks, caps and blocks of the counters, "ask:cap:block" joined by "," (a DENIED entry).
local function charges_text(a)
  local out = {}
  for i, c in ipairs(a.counters) do
    out[i] = int_text(c.ask) .. ':' .. int_text(c.cap) .. ':' .. int_text(c.block)
  end
  return table.concat(out, ',')
end

-- The DENIED usage record of a request the gate refused (the relay names the deciding
-- counter and reason from the values, charges and lines it carries).
local function record_denied(a, ctx)
  outbox_add(ctx, {
    'k', ENTRY.DENIED, 's', ctx.subject, 't', int_text(a.now_ms), 'n', a.name, 'g', a.gen, 'h', a.head,
    'e', a.estimate, 'v', a.values, 'q', a.own_layout, 'L', a.lines, 'r', charges_text(a),
  })
end

-- Threshold crossings. a.lines names each limit's lines on the step's counters:
-- "<i>:<units>:<label>:<cap>" joined by " ", i the counter's index (1-based), label the
-- threshold (w warn, b block, c cap) and the limit's kind (t tier, o override, h hard stop,
-- g global), cap that limit's cap (units). A line is reached when used + held reaches it
-- (granted: with the ask; denied: before it, or the ask would pass a cap line). The first
-- step that finds a line reached marks it on the counter (field "x<label>", which lives and
-- is reset with the counter, i.e. per window) and appends a THRESHOLD entry: once per scope,
-- limit kind, counter (metric, window) and threshold, whichever replica runs the step.
-- Returns true when the (granted) request is at or past a warn line: its decision is WARN.
local function note_crossings(a, ctx, granted)
  local warned = false
  local entries = nil
  for i, units, label, cap in string.gmatch(a.lines, '(%d+):(%d+):(%a%a):(%d+)') do
    local c = a.counters[tonumber(i)]
    if c and c.ask > 0 then
      local line, uh = tonumber(units), num(c.used) + num(c.held)
      local threshold = string.sub(label, 1, 1)
      local reached
      if granted then
        reached = uh + c.ask >= line
        warned = warned or (reached and threshold == 'w')
      else
        reached = uh >= line or (threshold == 'c' and uh + c.ask > line)
      end
      if reached and ctx.outbox and on_key('HSETNX', c.key, 'x' .. label, YES) == 1 then
        if not granted and not c.exists then  -- a marker on a counter nobody holds on yet
          redis.call('PEXPIREAT', c.key, math.max(c.expire_at_ms, expiry_floor(a.grace_ms)))
        end
        entries = entries or split(a.own_layout, ' ')
        local used, held = read_counter(c.key)
        outbox_add(ctx, {
          'k', ENTRY.THRESHOLD, 's', ctx.subject, 't', int_text(a.now_ms), 'q', entries[tonumber(i)] or '',
          'l', label, 'L', units, 'M', cap, 'u', used, 'o', held, 'h', a.head,
        })
      end
    end
  end
  return warned
end

-- Holds every ask on its counter; returns how long the record must live (unix ms): as
-- long as the counters it holds on, so the expiry sweep always finds it while there is
-- something to settle, and at least the grace period after its expiry.
local function hold(a, ctx)
  local floor_ms = expiry_floor(a.grace_ms)
  local record_expiry = math.max(a.expires_ms + a.grace_ms, floor_ms)
  local entries = nil
  for i, c in ipairs(a.counters) do
    if c.ask > 0 then
      local key_expiry = math.max(c.expire_at_ms, floor_ms)
      on_key('HINCRBY', c.key, 'held', c.ask)
      -- Every writer gives a counter the same expiry (its window's end plus the retention),
      -- set when it is created: an existing counter needs it again only where the floor
      -- (Redis' clock plus the grace period) is later than that.
      if not c.exists or c.expire_at_ms < floor_ms then
        redis.call('PEXPIREAT', c.key, key_expiry)
      end
      if not c.exists and ctx.records then  -- a subject's first hold in this window: on the board
        entries = entries or split(a.own_layout, ' ')
        note_used(ctx, c.key, entries[i] or '', 0)
      end
      record_expiry = math.max(record_expiry, key_expiry)
    end
  end
  return record_expiry
end

local function record_reservation(a, record_expiry, warned)
  local asks = {}
  for i, c in ipairs(a.counters) do
    asks[i] = int_text(c.ask)
  end
  local fields = {
    FIELD.STATE, STATE.OPEN, FIELD.GENERATION, a.gen, FIELD.CREATED_MS, int_text(a.now_ms),
    FIELD.EXPIRES_MS, int_text(a.expires_ms), FIELD.LAYOUT, a.own_layout, FIELD.ASKS, table.concat(asks, ','),
    FIELD.GLOBAL, a.has_global and YES or NO, FIELD.DECISION, warned and 'w' or 'a',
  }
  local optional = {
    {FIELD.GLOBAL_LAYOUT, a.global_layout}, {FIELD.ESTIMATE, a.estimate}, {FIELD.PLAN, a.plan_digest},
    {FIELD.LAYOUT_DIGEST, a.layout_digest}, {FIELD.HEAD, a.head},
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
  -- the reaper's index: this scope has an open record due at its earliest expiry
  on_key('ZADD', a.due_key, 'LT', a.expires_ms, string.sub(a.tag, 2, -2))
  if a.plan_digest ~= '' then
    keep_text(a.plan_key, a.plan, record_expiry)
  end
end

-- The outbox is full (the ledger store has been unreachable for long): a new reservation
-- is refused so that nothing is ever spent unrecorded; settlements still append.
local function outbox_full(a)
  return a.step == STEP.SUBJECT and a.outbox_cap > 0 and string.sub(a.outbox_key, 1, 2) == KEY.OUTBOX .. ':'
    and redis.call('XLEN', a.outbox_key) >= a.outbox_cap
end

-- Order: settle expired -> replay (the record) -> config version -> outbox room -> gates -> write.
-- Everything is checked before anything is written (Redis does not roll a script back).
local function reserve_one(KEYS, ARGV)
  local a = reserve_args(KEYS, ARGV)
  local ctx = outbox_ctx({
    tag = a.tag, open_key = a.open_key, now_ms = a.now_ms, grace_ms = a.grace_ms, sweep_limit = a.sweep_limit,
    keep = a.step == STEP.SUBJECT,
  }, a.outbox_key)
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
  if outbox_full(a) then
    return reply(a, STATUS.BACKLOG)
  end
  local denied = gate_denies(a)
  if a.step == STEP.DRY_RUN then
    return reply(a, STATUS.CHECKED)
  end
  if denied then
    if a.request then
      record_denial(a, ctx)
    end
    if ctx.records then
      record_denied(a, ctx)
    end
    note_crossings(a, ctx, false)
    return reply(a, STATUS.DENIED)
  end
  local record_expiry = hold(a, ctx)
  record_reservation(a, record_expiry, note_crossings(a, ctx, true))
  return reply(a, STATUS.RESERVED)
end

-- lib.lua: constants and functions shared by reserve.lua, reserve_batch.lua, settle.lua,
-- usage.lua, reap.lua and record.lua.
--
-- Not a script of its own: the store prepends this text to each of those scripts when it
-- registers them, so it has no KEYS or ARGV. Every key it touches is named in the
-- caller's KEYS or built from the caller's hash tag (a record's counters, its shared
-- texts), hence lives in the caller's slot (undeclared keys of the script's own slot are
-- allowed; scripts carry no flags).
--
-- Units: counter amounts are whole units (micro-dollars for cost_usd). They travel as
-- decimal strings and are Lua numbers (doubles) only for arithmetic, exact below 2^53;
-- numbers become text only through int_text() (tostring() would print 1e+15).
-- Times are unix milliseconds.
--
-- The encodings (layouts, values, amounts, records, tombstones) are documented, and
-- mirrored, in quota_service/store/protocol.py; so are the tables below (name for name:
-- tests/unit/store/test_protocol.py checks both sides agree).
--
-- Damaged data (a key of the wrong type, a field that does not parse) raises
-- "QUOTADATA <key> <what>": the store reports it as StoreDataError naming the key.

local KEY = {
  COUNTER = 'q', RECORD = 'r', OPEN = 'z', PLAN = 'a', LAYOUT = 'l', OUTBOX = 'x', DUE = 'e', GRANT = 'f',
  BOARD = 't',
}
local STATUS = {
  RESERVED = 'reserved', DENIED = 'denied', DENIED_GLOBAL = 'denied_global', CHECKED = 'checked',
  STALE_CONFIG = 'stale_config', DUPLICATE = 'duplicate', MISSING = 'missing', BACKLOG = 'backlog',
}
local STATE = {
  OPEN = 'open', EXPIRED = 'expired', COMMITTED = 'committed', RELEASED = 'released',
  DENIED = 'denied', DENIED_GLOBAL = 'denied_global',
}
local TOMBSTONE = {COMMITTED = 'c', RELEASED = 'r', DENIED = 'd', DENIED_GLOBAL = 'g'}
local STEP = {SUBJECT = 'subject', DRY_RUN = 'dry_run', GLOBAL = 'global', GLOBAL_REPLAY = 'global_replay'}
local SETTLE = {
  COMMIT = 'commit', RELEASE = 'release', EXPIRE = 'expire', WITHDRAW = 'withdraw',
  COMPENSATE = 'compensate', CONFIRM = 'confirm',
}
local OUTCOME = {
  SETTLED = 'settled', ALREADY_SETTLED = 'already_settled', MISSING = 'missing', KEPT = 'kept', OPEN = 'open',
}
local FIELD = {
  STATE = 'state', GENERATION = 'gen', CREATED_MS = 'created_ms', EXPIRES_MS = 'expires_ms',
  LAYOUT = 'layout', GLOBAL_LAYOUT = 'glayout', ASKS = 'asks', ESTIMATE = 'estimate', VALUES = 'values',
  PLAN = 'plan', LAYOUT_DIGEST = 'ldigest', GLOBAL = 'global', REPLAYED = 'replayed', REQUEST = 'request',
  HEAD = 'head', DECISION = 'decision',
}
-- The kinds of outbox entries (field "k"): the usage records and the threshold crossings.
local ENTRY = {
  COMMITTED = 'com', RELEASED = 'rel', EXPIRED = 'exp', CORRECTED = 'cor', DENIED = 'den', THRESHOLD = 'thr',
}
local YES, NO = '1', '0'
local GLOBAL_TAG = '{__global__}'

local TOMBSTONE_STATE = {
  [TOMBSTONE.COMMITTED] = STATE.COMMITTED, [TOMBSTONE.RELEASED] = STATE.RELEASED,
  [TOMBSTONE.DENIED] = STATE.DENIED, [TOMBSTONE.DENIED_GLOBAL] = STATE.DENIED_GLOBAL,
}

-- -- plumbing ---------------------------------------------------------------------------

local function data_error(key, what)
  error('QUOTADATA ' .. key .. ' ' .. what, 0)
end

-- redis.call(command, key, ...), except that Redis refusing it for the key's content
-- (WRONGTYPE, a field that is not a number) raises QUOTADATA naming the key. Any other
-- refusal (OOM, READONLY after a failover, ...) is Redis' own error, unchanged.
local function on_key(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, '^WRONGTYPE') or string.find(reply.err, 'not an integer')
        or string.find(reply.err, 'not a valid') then
      data_error(key, reply.err)
    end
    return redis.call(command, key, ...)  -- raises Redis' own error
  end
  return reply
end

local function num(value)
  return tonumber(value) or 0
end

-- A whole number read from the store, or QUOTADATA naming the key.
local function int_of(key, what, text)
  local value = tonumber(text)
  if value == nil or value ~= math.floor(value) then
    data_error(key, what .. ' is not a whole number: ' .. tostring(text))
  end
  return value
end

local function int_text(value)
  return string.format('%d', value)
end

local function key_of(kind, tag, name)
  return kind .. ':' .. tag .. ':' .. name
end

-- text split on a plain separator; every field kept ('a||b' -> {'a', '', 'b'}); '' -> {}.
local function split(text, sep)
  local out = {}
  if text == nil or text == '' then
    return out
  end
  local start = 1
  while true do
    local at = string.find(text, sep, start, true)
    if not at then
      out[#out + 1] = string.sub(text, start)
      return out
    end
    out[#out + 1] = string.sub(text, start, at - 1)
    start = at + #sep
  end
end

-- The first line of a text, and the rest.
local function first_line(text)
  local at = string.find(text, '\n', 1, true)
  if not at then
    return text, ''
  end
  return string.sub(text, 1, at - 1), string.sub(text, at + 1)
end

-- Redis' clock, unix ms: read once per script call (a batched call of many steps runs for a
-- few ms; every use below is an expiry floor of a minute or more, or a "does it expire
-- later" check where a few ms do not matter).
local script_time_ms = nil
local function redis_now_ms()
  if script_time_ms == nil then
    local t = redis.call('TIME')
    script_time_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return script_time_ms
end

-- The earliest expiry (unix ms) any key may get: Redis' own clock plus the grace period
-- (at least a minute). Expiries are computed from the service's now_ms, which may be skewed
-- against Redis (or be a test's manual clock): no key may be born already expired.
local function expiry_floor(grace_ms)
  return redis_now_ms() + math.max(grace_ms, 60000)
end

-- Moves key's expiry to at_ms unless it already expires later (never shortens it).
-- PTTL rather than PEXPIRETIME / PEXPIREAT GT (Redis 7.0+): the embedded fallback is Redis 6.2.
local function extend_expiry(key, at_ms)
  local ttl = redis.call('PTTL', key)
  if ttl == -2 then
    return
  end
  if ttl == -1 or redis_now_ms() + ttl < at_ms then
    redis.call('PEXPIREAT', key, at_ms)
  end
end

-- Writes a content-addressed text unless it is there, and makes it live until at_ms at least.
local function keep_text(key, text, at_ms)
  if on_key('SET', key, text, 'NX', 'PXAT', at_ms) == false then
    extend_expiry(key, at_ms)
  end
end

-- -- counters ---------------------------------------------------------------------------

-- used and held of a counter, as strings ("0" when absent), and whether it exists (a
-- counter hash always has a field: one with neither is absent).
local function read_counter(key)
  local v = on_key('HMGET', key, 'used', 'held')
  local used, held = v[1] or '0', v[2] or '0'
  int_of(key, 'used', used)
  int_of(key, 'held', held)
  return used, held, (v[1] or v[2]) ~= false
end

-- Adds delta (units, may be negative) to one field of a counter hash; a result below 0
-- (only after an admin reset) is clamped to 0, so a refund never creates spare capacity.
local function bump(key, field, delta)
  if delta == 0 then
    return nil
  end
  local value = on_key('HINCRBY', key, field, delta)
  if value < 0 then
    redis.call('HSET', key, field, 0)
    return 0
  end
  return value
end

-- The counter key of a counter entry '<metric>:<window>:<window_id>@<resets_at>'.
local function entry_key(tag, entry)
  return key_of(KEY.COUNTER, tag, string.match(entry, '^[^@]*'))
end

local function entry_metric(entry)
  return string.match(entry, '^[^:]*')
end

-- -- records ----------------------------------------------------------------------------

-- A tombstone's text: kind|generation|expires_at|layout digest|estimate|values, the kind
-- upper case when the reservation has a company-wide part, expires_at in unix seconds,
-- the estimate's units in the order of its metrics (an open record's 'm=u m=u' is sorted
-- by metric, as the plan text's estimated metrics are).
local function tombstone_text(kind, rec, values)
  if rec.has_global then
    kind = string.upper(kind)
  end
  local units = {}
  for _, item in ipairs(split(rec.estimate or '', ' ')) do
    units[#units + 1] = string.match(item, '=(.*)$')
  end
  local expires_at = ''
  if (rec.expires_ms_text or '') ~= '' then
    expires_at = int_text(math.ceil(num(rec.expires_ms_text) / 1000))
  end
  return table.concat({kind, rec.gen or '', expires_at, rec.ldigest or '', table.concat(units, ','), values or ''}, '|')
end

local function parse_tombstone(rkey, text)
  local f = split(text, '|')
  local state = TOMBSTONE_STATE[string.lower(f[1] or '')]
  if #f ~= 6 or not state then
    data_error(rkey, 'not a tombstone: ' .. text)
  end
  local expires_ms_text = ''
  if f[3] ~= '' then
    expires_ms_text = int_text(int_of(rkey, 'expires_at', f[3]) * 1000)
  end
  return {
    tomb = true, state = state, has_global = f[1] ~= string.lower(f[1]), gen = f[2],
    expires_ms_text = expires_ms_text, ldigest = f[4], estimate = f[5], values = f[6], plan = '',
  }
end

-- The record under rkey, or nil. Open and expired records are hashes (rec.tomb false,
-- rec.entries and rec.asks parsed), the others tombstone strings (rec.tomb true).
local function load_record(rkey)
  local kind = redis.call('TYPE', rkey).ok
  if kind == 'none' then
    return nil
  end
  if kind == 'string' then
    return parse_tombstone(rkey, redis.call('GET', rkey))
  end
  if kind ~= 'hash' then
    data_error(rkey, 'a record of type ' .. kind)
  end
  local flat = redis.call('HGETALL', rkey)
  local f = {}
  for i = 1, #flat, 2 do
    f[flat[i]] = flat[i + 1]
  end
  if f[FIELD.STATE] ~= STATE.OPEN and f[FIELD.STATE] ~= STATE.EXPIRED then
    data_error(rkey, 'a record in state ' .. tostring(f[FIELD.STATE]))
  end
  local rec = {
    tomb = false, state = f[FIELD.STATE], gen = f[FIELD.GENERATION] or '',
    expires_ms_text = f[FIELD.EXPIRES_MS] or '', expires_ms = int_of(rkey, FIELD.EXPIRES_MS, f[FIELD.EXPIRES_MS]),
    layout = f[FIELD.LAYOUT] or '', glayout = f[FIELD.GLOBAL_LAYOUT] or '', estimate = f[FIELD.ESTIMATE] or '',
    values = f[FIELD.VALUES] or '', plan = f[FIELD.PLAN] or '', ldigest = f[FIELD.LAYOUT_DIGEST] or '',
    has_global = f[FIELD.GLOBAL] == YES, replayed = f[FIELD.REPLAYED] == YES, request = f[FIELD.REQUEST] == YES,
    entries = split(f[FIELD.LAYOUT] or '', ' '), asks = {},
    head = f[FIELD.HEAD] or '', decision = f[FIELD.DECISION] or '', created_ms_text = f[FIELD.CREATED_MS] or '',
  }
  for i, ask in ipairs(split(f[FIELD.ASKS] or '', ',')) do
    rec.asks[i] = int_of(rkey, FIELD.ASKS, ask)
  end
  if #rec.asks ~= #rec.entries then
    data_error(rkey, 'asks do not match the layout')
  end
  return rec
end

-- The text a record names (its plan or layout text, by digest), which must be there.
local function named_text(tag, kind, digest, rkey)
  if digest == '' then
    return ''
  end
  local key = key_of(kind, tag, digest)
  local text = on_key('GET', key)
  if not text then
    data_error(key, 'is gone, but ' .. rkey .. ' names it')
  end
  return text
end

-- What a tombstone's layout text says: the plan text's digest, and the layout (own
-- counters, newline, company-wide ones).
local function tombstone_layout(tag, rkey, rec)
  local plan_digest, layout = first_line(named_text(tag, KEY.LAYOUT, rec.ldigest, rkey))
  return plan_digest, layout
end

-- The counters a tombstone names.
local function tombstone_entries(tag, rkey, rec)
  local _, layout = tombstone_layout(tag, rkey, rec)
  return split(first_line(layout), ' ')
end

-- -- the outbox ---------------------------------------------------------------------------
--
-- Every change of a subject's counters that a usage record describes appends that record to
-- the outbox stream ctx.outbox in the same script call, so the two are one atomic step: a
-- relay in the service copies the entries into the ledger (idempotent on the record's id)
-- and deletes them (quota_service/server/usage_relay.py). The entry fields are mirrored in
-- quota_service/ledger/outbox.py, which reads them:
--   k  ENTRY.* kind                     s  subject (or __global__ for a crossing)
--   t  when (unix ms)                   n, g  the record's name and generation
--   h  the request's head (ARGV)        e  the estimate (amounts)   a  the actual (amounts)
--   c  created (unix ms)                x  expires (unix ms)        d  decision ('w' WARN, 'a' ALLOW)
--   m  the settle mode                  v  values seen (used,held,...)   q  layout / counter entry
--   L, l, M  a crossing's line (units), label and cap (units); u, o: used and held after
-- ctx: {outbox = key, records = true in a subject's scope, subject = S}. The company-wide
-- scope writes crossings only (its changes are described by the subjects' records).

local function outbox_add(ctx, fields)
  if ctx.outbox then
    redis.call('XADD', ctx.outbox, '*', unpack(fields))
  end
end

-- The usage record of a settlement (kind ENTRY.*) of the open or expired record rec.
local function record_usage(ctx, kind, name, rec, at_ms, mode, actual_text)
  if not ctx.records then
    return
  end
  outbox_add(ctx, {
    'k', kind, 's', ctx.subject, 't', int_text(at_ms), 'n', name, 'g', rec.gen or '', 'h', rec.head or '',
    'e', rec.estimate or '', 'a', actual_text or '', 'c', rec.created_ms_text or '', 'x', rec.expires_ms_text or '',
    'd', rec.decision or '', 'm', mode,
  })
end

-- The context fields the outbox needs, for the scope of tag. A key that is not an outbox
-- ("x:...") in its place means the service keeps no ledger: nothing is appended.
local function outbox_ctx(ctx, outbox_key)
  if string.sub(outbox_key, 1, #KEY.OUTBOX + 1) == KEY.OUTBOX .. ':' then
    ctx.outbox = outbox_key
  end
  ctx.records = ctx.outbox ~= nil and ctx.tag ~= GLOBAL_TAG
  ctx.subject = string.sub(ctx.tag, 2, -2)
  return ctx
end

-- -- settling ---------------------------------------------------------------------------

-- The top spenders, kept as they change (TopUsage reads them instead of scanning every key):
-- per slot and concrete day or month window, a zset t:{T}:<metric>:<window>:<window_id> of
-- the slot's subjects scored by the counter's used. Written wherever a subject's used changes
-- (settlements, the sweep, a fail-open write-back) when the service keeps a ledger (the
-- outbox names the slot tag); lives as long as the counter it mirrors.
local function note_used(ctx, key, entry, used)
  if used == nil or not ctx or not ctx.records then
    return
  end
  local name = string.match(entry, '^[^@]*')
  local window = string.match(name, '^[^:]*:([^:]*):')
  if window ~= 'day' and window ~= 'month' then
    return
  end
  local board = KEY.BOARD .. ':' .. string.sub(ctx.outbox, #KEY.OUTBOX + 2) .. ':' .. name
  if redis.call('ZADD', board, used, ctx.subject) == 1 and redis.call('PTTL', board) == -1 then
    local ttl = redis.call('PTTL', key)
    if ttl > 0 then
      redis.call('PEXPIRE', board, ttl)
    end
  end
end

-- Moves the counters of an open or expired record for mode (SETTLE.EXPIRE, COMMIT or
-- RELEASE; actual = {metric = units} for COMMIT):
--   open    + expire : held -= ask, used += ask
--   open    + commit : held -= ask, used += actual
--   open    + release: held -= ask
--   expired + commit : used += actual - ask
--   expired + release: used -= ask
-- A counter key that no longer exists belongs to a window past its retention (or was
-- reset): it is left alone rather than recreated without a TTL, and reported lost.
-- Returns per counter {used_delta, held_delta, exists}.
local function move_counters(tag, rec, mode, actual, ctx)
  local changes = {}
  for i, entry in ipairs(rec.entries) do
    local key, ask = entry_key(tag, entry), rec.asks[i]
    local dused, dheld = 0, 0
    local actual_units = 0
    if mode == SETTLE.COMMIT then
      actual_units = actual[entry_metric(entry)] or 0
    end
    if rec.state == STATE.OPEN then
      dheld = -ask
      if mode == SETTLE.EXPIRE then
        dused = ask
      elseif mode == SETTLE.COMMIT then
        dused = actual_units
      end
    elseif mode == SETTLE.COMMIT then
      dused = actual_units - ask
    elseif mode == SETTLE.RELEASE then
      dused = -ask
    end
    local exists = redis.call('EXISTS', key) == 1
    if exists then
      bump(key, 'held', dheld)
      note_used(ctx, key, entry, bump(key, 'used', dused))
    end
    changes[i] = {dused, dheld, exists}
  end
  return changes
end

-- When a settled record (and what it names) may be forgotten: the grace period after
-- max(now, expiry), never before Redis' clock plus the grace.
local function settled_expiry(rec, now_ms, grace_ms)
  return math.max(math.max(now_ms, num(rec.expires_ms_text)) + grace_ms, expiry_floor(grace_ms))
end

-- Replaces a record by its tombstone (kind: TOMBSTONE.*), kept for the grace period with
-- the shared texts it names (the layout text is written from the record if missing).
local function write_tombstone(ctx, rkey, rec, kind, values)
  local at_ms = settled_expiry(rec, ctx.now_ms, ctx.grace_ms)
  if rec.ldigest ~= '' then
    keep_text(key_of(KEY.LAYOUT, ctx.tag, rec.ldigest), rec.plan .. '\n' .. rec.layout .. '\n' .. rec.glayout, at_ms)
  end
  if rec.plan ~= '' then
    extend_expiry(key_of(KEY.PLAN, ctx.tag, rec.plan), at_ms)
  end
  redis.call('SET', rkey, tombstone_text(kind, rec, values), 'PXAT', at_ms)
end

-- Settles the open or expired record rec (name: its member of the open set) for mode:
-- moves its counters, then EXPIRE keeps it as an expired hash (a late commit corrects it),
-- COMMIT and RELEASE replace it by a tombstone (ctx.keep) or delete it (the global scope:
-- replays answer from the subject's record). Returns the counter changes.
local function settle_record(ctx, rkey, name, rec, mode, actual)
  local changes = move_counters(ctx.tag, rec, mode, actual, ctx)
  redis.call('ZREM', ctx.open_key, name)
  if mode == SETTLE.EXPIRE then
    record_usage(ctx, ENTRY.EXPIRED, name, rec, math.min(rec.expires_ms, ctx.now_ms), mode, '')
  elseif rec.state == STATE.EXPIRED then
    record_usage(ctx, ENTRY.CORRECTED, name, rec, ctx.now_ms, mode, ctx.actual_text)
  elseif mode == SETTLE.COMMIT then
    record_usage(ctx, ENTRY.COMMITTED, name, rec, ctx.now_ms, mode, ctx.actual_text)
  else
    record_usage(ctx, ENTRY.RELEASED, name, rec, ctx.now_ms, mode, '')
  end
  if mode == SETTLE.EXPIRE then
    -- kept (with the texts it names) so that a late commit still corrects it
    local at_ms = settled_expiry(rec, ctx.now_ms, ctx.grace_ms)
    redis.call('HSET', rkey, FIELD.STATE, STATE.EXPIRED)
    redis.call('PEXPIREAT', rkey, at_ms)
    if rec.plan ~= '' then
      extend_expiry(key_of(KEY.PLAN, ctx.tag, rec.plan), at_ms)
    end
  elseif ctx.keep then
    local kind = TOMBSTONE.RELEASED
    if mode == SETTLE.COMMIT then
      kind = TOMBSTONE.COMMITTED
    end
    write_tombstone(ctx, rkey, rec, kind, rec.values)
  else
    redis.call('DEL', rkey)
  end
  return changes
end

-- Settles at their estimate up to ctx.sweep_limit open records of this scope whose
-- expires_ms <= now_ms (names of vanished or settled records just leave the set).
local function sweep_expired(ctx)
  local names = on_key('ZRANGEBYSCORE', ctx.open_key, '-inf', ctx.now_ms, 'LIMIT', 0, ctx.sweep_limit)
  for _, name in ipairs(names) do
    local rkey = key_of(KEY.RECORD, ctx.tag, name)
    local rec = load_record(rkey)
    if rec and not rec.tomb and rec.state == STATE.OPEN then
      settle_record(ctx, rkey, name, rec, SETTLE.EXPIRE, nil)
    else
      redis.call('ZREM', ctx.open_key, name)
    end
  end
end

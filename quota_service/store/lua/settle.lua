-- settle.lua: commit, release, withdraw, compensate or confirm ONE record of one scope (a
-- subject, or __global__). (The store prepends lib.lua, whose constants and functions this
-- script uses: load_record, settle_record, move_counters, write_tombstone, ...)
--
-- KEYS[1]  r:{S}:<name>   the record
-- KEYS[2]  z:{S}:open     zset of open record names, score = expires_ms (unix ms)
--
-- ARGV[1]  mode             SETTLE.COMMIT | RELEASE | WITHDRAW | COMPENSATE | CONFIRM
-- ARGV[2]  tag              "{S}": the hash tag the record's other keys are built from
-- ARGV[3]  now_ms           unix ms
-- ARGV[4]  name             the record's name (its member of KEYS[2])
-- ARGV[5]  generation       the reservation id's generation; another one's record is MISSING
--                           ("" in the global scope, whose names are whole nonces)
-- ARGV[6]  grace_ms         ms a settled record is kept after max(now_ms, expires_ms)
-- ARGV[7]  keep             "1": a committed or released record becomes a tombstone;
--                           "0": it is deleted (the global scope)
-- ARGV[8]  global_values    COMPENSATE: values (used,held,...) the company-wide step saw
-- ARGV[9..] COMMIT: actual amounts as pairs, metric then units; a metric left out counts 0
--
-- Modes, on an open or expired record (see lib.lua move_counters for the amounts):
--   COMMIT, RELEASE  settle it (outcome SETTLED); on a tombstone: nothing (ALREADY_SETTLED)
--   WITHDRAW         the caller was answered DENY after a store failure: release it and
--                    forget it (deleted: a repeat of the request_id is decided afresh);
--                    unless a replay handed it out since (outcome KEPT, nothing changes)
--   COMPENSATE       the company-wide step denied: release it; a request_id's record
--                    becomes the DENIED_GLOBAL tombstone with both steps' values
--   CONFIRM          nothing changes; outcome OPEN while it is open or expired (a replay
--                    made its company-wide part: keep that part), else ALREADY_SETTLED
--
-- Returns {outcome, state_before, has_global, layout, counters}:
--   outcome      OUTCOME.*: SETTLED | ALREADY_SETTLED | MISSING | KEPT | OPEN
--   state_before STATE.* ("" when missing)
--   has_global   "1" when the reservation has (or may have) a company-wide part
--   layout       the record's own layout (names the counters below; "" when unknown)
--   counters     flat, per counter of the layout: used, held (after), used_delta,
--                held_delta (what this call applied) and exists ("1"/"0": "0" when the
--                counter is gone, past its retention: that part was reported, not counted)

local mode = ARGV[1]
local ctx = {tag = ARGV[2], open_key = KEYS[2], now_ms = num(ARGV[3]), grace_ms = num(ARGV[6]), keep = ARGV[7] == YES}
local rkey, name, generation = KEYS[1], ARGV[4], ARGV[5]

local function counters_reply(entries, changes)
  local flat = {}
  for i, entry in ipairs(entries) do
    local used, held = read_counter(entry_key(ctx.tag, entry))
    local change = changes[i] or {0, 0, redis.call('EXISTS', entry_key(ctx.tag, entry)) == 1}
    flat[#flat + 1] = used
    flat[#flat + 1] = held
    flat[#flat + 1] = int_text(change[1])
    flat[#flat + 1] = int_text(change[2])
    flat[#flat + 1] = change[3] and YES or NO
  end
  return flat
end

local function answer(outcome, rec, entries, changes)
  return {outcome, rec.state, rec.has_global and YES or NO, table.concat(entries, ' '), counters_reply(entries, changes)}
end

local rec = load_record(rkey)
if not rec or rec.state == STATE.DENIED or (generation ~= '' and rec.gen ~= generation) then
  return {OUTCOME.MISSING, '', NO, '', {}}
end
if rec.tomb then
  return answer(OUTCOME.ALREADY_SETTLED, rec, tombstone_entries(ctx.tag, rkey, rec), {})
end
if mode == SETTLE.CONFIRM then
  return answer(OUTCOME.OPEN, rec, rec.entries, {})
end
if mode == SETTLE.WITHDRAW then
  if rec.replayed then
    return answer(OUTCOME.KEPT, rec, rec.entries, {})
  end
  local changes = move_counters(ctx.tag, rec, SETTLE.RELEASE, nil)
  redis.call('ZREM', ctx.open_key, name)
  redis.call('DEL', rkey)
  return answer(OUTCOME.SETTLED, rec, rec.entries, changes)
end
if mode == SETTLE.COMPENSATE then
  local changes = move_counters(ctx.tag, rec, SETTLE.RELEASE, nil)
  redis.call('ZREM', ctx.open_key, name)
  if rec.request then
    write_tombstone(ctx, rkey, rec, TOMBSTONE.DENIED_GLOBAL, rec.values .. ';' .. ARGV[8])
  else
    redis.call('DEL', rkey)
  end
  return answer(OUTCOME.SETTLED, rec, rec.entries, changes)
end

local actual = {}
if mode == SETTLE.COMMIT then
  for i = 9, #ARGV - 1, 2 do
    actual[ARGV[i]] = num(ARGV[i + 1])
  end
end
local changes = settle_record(ctx, rkey, name, rec, mode, actual)
return answer(OUTCOME.SETTLED, rec, rec.entries, changes)

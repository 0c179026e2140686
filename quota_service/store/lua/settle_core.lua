-- settle_core.lua: settle_one(KEYS, ARGV), the body of settle.lua as a function, so that
-- settle.lua (one settlement) and reserve_fused.lua (a global denial's compensation in the
-- same script call as the reservation) share one implementation. Not a script of its own:
-- the store prepends it (after lib.lua). KEYS and ARGV are exactly those documented in
-- settle.lua; the function returns what settle.lua returns.

local function settle_counters_reply(ctx, entries, changes)
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

local function settle_answer(ctx, outcome, rec, entries, changes)
  return {outcome, rec.state, rec.has_global and YES or NO, table.concat(entries, ' '),
          settle_counters_reply(ctx, entries, changes)}
end

local function settle_one(KEYS, ARGV)
  local mode = ARGV[1]
  local ctx = outbox_ctx(
    {tag = ARGV[2], open_key = KEYS[2], now_ms = num(ARGV[3]), grace_ms = num(ARGV[6]), keep = ARGV[7] == YES},
    KEYS[3]
  )
  local rkey, name, generation = KEYS[1], ARGV[4], ARGV[5]

  local rec = load_record(rkey)
  if not rec or rec.state == STATE.DENIED or (generation ~= '' and rec.gen ~= generation) then
    return {OUTCOME.MISSING, '', NO, '', {}}
  end
  if rec.tomb then
    return settle_answer(ctx, OUTCOME.ALREADY_SETTLED, rec, tombstone_entries(ctx.tag, rkey, rec), {})
  end
  if mode == SETTLE.CONFIRM then
    return settle_answer(ctx, OUTCOME.OPEN, rec, rec.entries, {})
  end
  if mode == SETTLE.WITHDRAW then
    if rec.replayed then
      return settle_answer(ctx, OUTCOME.KEPT, rec, rec.entries, {})
    end
    local changes = move_counters(ctx.tag, rec, SETTLE.RELEASE, nil, ctx)
    redis.call('ZREM', ctx.open_key, name)
    redis.call('DEL', rkey)
    if rec.state == STATE.EXPIRED then  -- it had been charged at its estimate: that is taken back
      record_usage(ctx, ENTRY.CORRECTED, name, rec, ctx.now_ms, mode, '')
    else
      record_usage(ctx, ENTRY.RELEASED, name, rec, ctx.now_ms, mode, '')
    end
    return settle_answer(ctx, OUTCOME.SETTLED, rec, rec.entries, changes)
  end
  if mode == SETTLE.COMPENSATE then
    local changes = move_counters(ctx.tag, rec, SETTLE.RELEASE, nil, ctx)
    redis.call('ZREM', ctx.open_key, name)
    if ctx.records then  -- the request's one record: denied by the company-wide gate
      outbox_add(ctx, {
        'k', ENTRY.DENIED, 's', ctx.subject, 't', int_text(ctx.now_ms), 'n', name, 'g', rec.gen, 'h', rec.head,
        'e', rec.estimate, 'v', ARGV[8], 'q', rec.glayout, 'm', mode,
      })
    end
    if rec.request then
      write_tombstone(ctx, rkey, rec, TOMBSTONE.DENIED_GLOBAL, rec.values .. ';' .. ARGV[8])
    else
      redis.call('DEL', rkey)
    end
    return settle_answer(ctx, OUTCOME.SETTLED, rec, rec.entries, changes)
  end

  local actual = {}
  if mode == SETTLE.COMMIT then
    local pairs_text = {}
    for i = 9, #ARGV - 1, 2 do
      actual[ARGV[i]] = num(ARGV[i + 1])
      pairs_text[#pairs_text + 1] = ARGV[i] .. '=' .. ARGV[i + 1]
    end
    ctx.actual_text = table.concat(pairs_text, ' ')
  end
  local changes = settle_record(ctx, rkey, name, rec, mode, actual)
  return settle_answer(ctx, OUTCOME.SETTLED, rec, rec.entries, changes)
end

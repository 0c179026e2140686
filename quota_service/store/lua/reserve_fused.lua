-- reserve_fused.lua: several whole reservations, each its subject step AND its company-wide
-- step, in one script call (single Redis only: the keys of many slots in one script).
-- (The store prepends lib.lua, reserve_core.lua and settle_core.lua: reserve_one() and
-- settle_one() there.)
--
-- On one Redis, concurrent CheckAndReserve calls share one round trip: the store queues the
-- reservations that arrive while a call is in flight and sends them together (group commit).
-- Items run one after the other, in the order submitted; each exactly as the calls a
-- reservation makes on Redis Cluster (reserve.lua on the subject, reserve.lua on
-- __global__, settle.lua COMPENSATE when the global step denies), but with nothing of any
-- other request between its steps: a global denial gives the subject's part back in the
-- same atomic step, so no other request ever sees it held.
--
-- KEYS           the concatenation, per item, of its subject step's KEYS and then its
--                global step's KEYS, each as reserve.lua documents them
-- ARGV[1]        n, the number of items
-- ARGV[4i-2..4i+1]  (i = 1..n) ks, as, kg, ag: how many KEYS and ARGV item i's subject step
--                and global step take (kg = ag = 0: no company-wide charges)
-- ARGV[4n+2..]   the concatenation, per item, of its subject step's ARGV and then its global
--                step's ARGV, as reserve.lua documents them. The global step's expires_ms
--                (its ARGV[6]) is replaced by the subject step's answer.
--
-- Per item, the global step runs only when the subject step answered RESERVED afresh (not
-- a replay: the store completes a replay's global part with separate calls, as on Redis
-- Cluster). A failure inside one item (a damaged key, a script error) is that item's only:
-- every item runs under pcall, and a reservation checks everything before it writes.
--
-- Returns an array of n results, each either
--   {"ok", subject_reply, global_reply, compensation_reply}   (the last two {} when not run;
--       replies as reserve.lua and settle.lua return them), or
--   {"err", message}

local function slice(list, from, count)
  local out = {}
  for j = 1, count do
    out[j] = list[from + j - 1]
  end
  return out
end

local function fused_one(sk, sa, gk, ga)
  local own = reserve_one(sk, sa)
  if #gk == 0 or own[1] ~= STATUS.RESERVED or own[4] == YES then
    return {'ok', own, {}, {}}
  end
  ga[6] = own[3]
  local company = reserve_one(gk, ga)
  if company[1] ~= STATUS.DENIED then
    return {'ok', own, company, {}}
  end
  -- settle.lua COMPENSATE of the subject's record: its KEYS[1..2] and outbox (KEYS[7] of the
  -- subject step), tag, now, name, grace
  local compensated = settle_one(
    {sk[1], sk[2], sk[7]},
    {SETTLE.COMPENSATE, sa[2], sa[3], sa[4], own[2], sa[7], YES, table.concat(company[5], ',')}
  )
  return {'ok', own, company, compensated}
end

local n = tonumber(ARGV[1])
local key_at, arg_at = 1, 4 * n + 2
local results = {}
for i = 1, n do
  local at = 4 * i - 2
  local ks, as, kg, ag = tonumber(ARGV[at]), tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local sk, sa = slice(KEYS, key_at, ks), slice(ARGV, arg_at, as)
  local gk, ga = slice(KEYS, key_at + ks, kg), slice(ARGV, arg_at + as, ag)
  key_at, arg_at = key_at + ks + kg, arg_at + as + ag
  local ok, result = pcall(fused_one, sk, sa, gk, ga)
  if ok then
    results[i] = result
  else
    results[i] = {'err', type(result) == 'table' and tostring(result.err) or tostring(result)}
  end
end
return results

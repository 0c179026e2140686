-- reserve_batch.lua: several reservations of ONE scope in one script call (group commit).
-- (The store prepends lib.lua and reserve_core.lua: each item is reserve_one() there.)
-- Used for STEP.GLOBAL and STEP.GLOBAL_REPLAY items.
--
-- The company-wide (global) counters are touched by every request; instead of one round
-- trip each, the store queues the global steps that arrive while one is in flight and sends
-- them together. Items run one after the other, each exactly as reserve.lua would run it
-- on its own (sweep, replay, gate, all-or-nothing write), so the outcome is that of the same
-- calls made sequentially in this order. Every key belongs to the one slot of the scope.
--
-- KEYS           the concatenation of each item's KEYS, as reserve.lua documents them
-- ARGV[1]        n, the number of items
-- ARGV[2i], ARGV[2i+1]   (i = 1..n) k_i and a_i: how many KEYS and ARGV item i takes
-- ARGV[2n+2..]   the concatenation of each item's ARGV, as reserve.lua documents them
--
-- Returns an array of n results, each as reserve.lua returns it.

local n = tonumber(ARGV[1])
local key_at, arg_at = 1, 2 * n + 2
local results = {}
for i = 1, n do
  local k, a = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local item_keys, item_args = {}, {}
  for j = 1, k do
    item_keys[j] = KEYS[key_at + j - 1]
  end
  for j = 1, a do
    item_args[j] = ARGV[arg_at + j - 1]
  end
  key_at, arg_at = key_at + k, arg_at + a
  results[i] = reserve_one(item_keys, item_args)
end
return results

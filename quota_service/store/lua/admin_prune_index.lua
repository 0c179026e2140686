-- admin_prune_index.lua: drop a subject from the index of subjects with overrides, unless
-- it was (re)noted recently.
--
-- KEYS[1]  x:{__overrides__}  zset: subject -> unix seconds of its last override write
--
-- ARGV[1]  subject
-- ARGV[2]  cutoff   unix seconds: the entry is removed only if its score <= cutoff, so an
--                   override write in flight (noted just before it writes) is never lost
--
-- Returns 1 when removed, else 0.

local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0

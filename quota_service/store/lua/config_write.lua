-- config_write.lua: one admin write to a subject's config, with its version bump, atomically.
--
-- KEYS[1]  c:{S}   config hash: "tier", "version" (an integer counter; absent = "0")
-- KEYS[2]  o:{S}   overrides hash: field "<metric>:<window>" -> JSON (see config_get.lua)
--
-- ARGV[1]  op      "set_tier" | "clear_tier" | "set_override" | "delete_override"
-- ARGV[2]  tier name (set_tier) or override field "<metric>:<window>" (*_override)
-- ARGV[3]  override JSON (set_override)
-- ARGV[4]  now_s   unix seconds (delete_override: an already expired override counts as absent)
--
-- Every op that changes something runs HINCRBY c:{S} version 1 and PUBLISHes KEYS[1] (the
-- subject's config key, "c:{S}") on the channel "quota:config:{__config__}" (CONFIG_CHANNEL
-- in quota_service/store/admin_store.py): every replica forgets its cached copy of that
-- subject's config. delete_override of a missing override changes nothing (no message).
-- Returns {previous, changed, version}:
--   set_tier / clear_tier: previous = the tier before ("" = none), changed "1"
--   set_override: previous "", changed "1"
--   delete_override: previous "", changed "1" when a live override was deleted, else "0"

local op = ARGV[1]
local previous = ''
if op == 'set_tier' or op == 'clear_tier' then
  previous = redis.call('HGET', KEYS[1], 'tier') or ''
  if op == 'set_tier' then
    redis.call('HSET', KEYS[1], 'tier', ARGV[2])
  else
    redis.call('HDEL', KEYS[1], 'tier')
  end
elseif op == 'set_override' then
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
elseif op == 'delete_override' then
  local prior = redis.call('HGET', KEYS[2], ARGV[2])
  if not prior then
    return {'', '0', redis.call('HGET', KEYS[1], 'version') or '0'}
  end
  redis.call('HDEL', KEYS[2], ARGV[2])
  local expires_at = tonumber(cjson.decode(prior).expires_at) or 0
  if expires_at > 0 and expires_at <= tonumber(ARGV[4]) then
    -- it was already invisible: removing it changes nothing anyone could see
    return {'', '0', redis.call('HGET', KEYS[1], 'version') or '0'}
  end
else
  return redis.error_reply('config_write.lua: unknown op ' .. tostring(op))
end
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', 'quota:config:{__config__}', KEYS[1])
return {previous, '1', tostring(version)}

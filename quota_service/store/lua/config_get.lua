-- config_get.lua: one subject's admin config, read atomically (tier, version and overrides agree).
--
-- KEYS[1]  c:{S}   config hash: "tier" (absent = unassigned), "version" (absent = "0")
-- KEYS[2]  o:{S}   overrides hash: field "<metric>:<window>" -> JSON
--                  {"max_units": "<units>", "expires_at": <unix s, 0 = never>, "reason", "created_at", "created_by"}
--
-- ARGV[1]  now_s   unix seconds: overrides with 0 < expires_at <= now_s are left out and deleted
--                  (lazily; that is no admin write, so the version does not change)
--
-- Returns {tier, has_tier, version, overrides}: has_tier "1"/"0"; overrides flat {field, json, ...}.

local now_s = tonumber(ARGV[1])
local tier = redis.call('HGET', KEYS[1], 'tier')
local version = redis.call('HGET', KEYS[1], 'version') or '0'
local live = {}
local stale = {}
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local expires_at = tonumber(cjson.decode(all[i + 1]).expires_at) or 0
  if expires_at > 0 and expires_at <= now_s then
    stale[#stale + 1] = all[i]
  else
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[2], unpack(stale))
end
if tier then
  return {tier, '1', version, live}
end
return {'', '0', version, live}

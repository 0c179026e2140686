-- record.lua: read ONE record and the plan text it names, atomically (get_reservation).
-- (The store prepends lib.lua, whose constants and functions this script uses.)
--
-- KEYS[1]  r:{S}:<name>   the record
--
-- ARGV[1]  tag            "{S}": the hash tag the plan and layout texts' keys are built from
--
-- Returns {form, content, plan}:
--   form     "hash" (open or expired record) | "string" (a tombstone) | "none"
--   content  hash: flat {field_1, value_1, ...}; string: the tombstone's text; none: ""
--   plan     the plan text the record names ("" when it names none)
-- A record of another type, or one naming a text that is gone, raises QUOTADATA.

local rkey = KEYS[1]
local rec = load_record(rkey)
if not rec then
  return {'none', '', ''}
end
local plan_digest = rec.plan
if rec.tomb then
  plan_digest = tombstone_layout(ARGV[1], rkey, rec)
end
local plan = named_text(ARGV[1], KEY.PLAN, plan_digest, rkey)
if rec.tomb then
  return {'string', redis.call('GET', rkey), plan}
end
return {'hash', redis.call('HGETALL', rkey), plan}

-- admin_stop.lua: put or delete one emergency stop, and announce the change, atomically.
--
-- KEYS[1]  s:{__stops__}  hash: field "<SCOPE>" (GLOBAL) or "<SCOPE>:<target>" -> JSON
--                         {"scope", "target", "reason", "created_at" (unix s), "created_by"}
--
-- ARGV[1]  op        "put" | "delete"
-- ARGV[2]  field     the stop's field (see KEYS[1])
-- ARGV[3]  stop JSON (put; ignored by delete)
-- ARGV[4]  channel   the pub/sub channel every replica listens on; the message is
--                    "<op> <field>" (replicas re-read the whole hash, so it is only a nudge)
--
-- Returns {previous, changed}: previous = the field's JSON before ("" = none);
-- changed "1", or "0" for a delete of a stop that was not there (nothing published).

local previous = redis.call('HGET', KEYS[1], ARGV[2]) or ''
if ARGV[1] == 'put' then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
elseif ARGV[1] == 'delete' then
  if previous == '' then
    return {'', '0'}
  end
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  return redis.error_reply('admin_stop.lua: unknown op ' .. tostring(ARGV[1]))
end
redis.call('PUBLISH', ARGV[4], ARGV[1] .. ' ' .. ARGV[2])
return {previous, '1'}

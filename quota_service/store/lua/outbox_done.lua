-- outbox_done.lua: the usage relay has stored these outbox entries in the ledger: acknowledge
-- them for its consumer group and delete them from the stream, in one step (acknowledged but
-- not deleted would stay in the stream for good: the group never delivers them again).
-- (A script of its own: no lib.lua.)
--
-- KEYS[1]  x:{T}     the outbox stream
-- ARGV[1]  group     the relay's consumer group
-- ARGV[2..] ids      the entry ids
--
-- Returns how many entries the stream holds afterwards (what still waits for the ledger).

local ids = {}
for i = 2, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
if #ids > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
  redis.call('XDEL', KEYS[1], unpack(ids))
end
return redis.call('XLEN', KEYS[1])

-- Take over the entries a consumer holds, but only if its heartbeat has lapsed:
-- the check and the claim are one atomic step, so a live consumer never loses
-- an entry and two hosts never claim the same one.
-- KEYS[1] the stream, KEYS[2] the consumer's heartbeat key
-- ARGV[1] the group, ARGV[2] the silent consumer, ARGV[3] the new owner, ARGV[4] at most this many
-- Returns XCLAIM's reply: a list of (id, fields or nil); empty when the consumer is alive or holds nothing.
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
if #pending == 0 then return {} end
local ids = {}
for i, entry in ipairs(pending) do ids[i] = entry[1] end
return redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, unpack(ids))

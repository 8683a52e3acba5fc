-- The cluster's LLM slots: one sorted set, a member per holder token, scored by
-- the expiry of its lease in ms on Redis's own clock (TIME), so that the hosts'
-- clocks never matter. Lapsed leases are dropped before any count.
-- KEYS[1] the set
-- ARGV[1] "acquire", "renew", "release" or "holders"; ARGV[2] the holder's token;
-- ARGV[3] the cap and ARGV[4] the lease in ms (acquire, renew)
-- acquire: 1 when the token holds a slot (taken now or held already), 0 when every slot is taken.
-- renew: 1 when extended, 2 when taken again (its lease had lapsed and a slot was free), 0 lost.
-- release: 1 when the token held a slot, 0 when it did not (released already, or lapsed).
-- holders: the tokens holding a slot.
local op = ARGV[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if op == 'release' then
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
if op == 'holders' then
  return redis.call('ZRANGE', KEYS[1], 0, -1)
end
local cap = tonumber(ARGV[3])
local lease = tonumber(ARGV[4])
local held = redis.call('ZSCORE', KEYS[1], ARGV[2])
local answer = 1
if not held then
  if redis.call('ZCARD', KEYS[1]) >= cap then
    return 0
  end
  if op == 'renew' then
    answer = 2
  end
end
redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
-- The set lapses with its last lease: nothing is left behind once every host is gone.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[1], tonumber(last[2]) + 1000)
return answer

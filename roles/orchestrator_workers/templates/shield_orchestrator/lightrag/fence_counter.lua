-- Raise the workspace lock's fencing counter to at least ARGV[1]; never lowers it.
-- KEYS[1] the counter. Returns the counter after.
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local wanted = tonumber(ARGV[1])
if current < wanted then
  redis.call('SET', KEYS[1], wanted)
  return wanted
end
return current

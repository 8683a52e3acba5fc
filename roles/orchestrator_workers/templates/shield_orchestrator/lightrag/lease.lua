-- Renew or release a lease, only by the holder that took it.
-- KEYS[1] the lease key
-- ARGV[1] "renew" or "release", ARGV[2] the holder's token, ARGV[3] the lease in ms (renew)
-- Returns 1 when the holder still held it (renewed or released), 0 when it did not.
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if ARGV[1] == 'renew' then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
else
  redis.call('DEL', KEYS[1])
end
return 1

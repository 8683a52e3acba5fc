-- After the PostgreSQL sync wrote some jobs' rows: start the TTL of the finished
-- ones (their rows are now durable) and clear their dirty mark, unless the job
-- changed again meanwhile (its version moved on).
-- KEYS[1] dirty-jobs hash, then per job: its hash, its done set, its admitted bitmap
-- and its duplicates hash
-- ARGV[1] TTL in seconds, then per job: job id, version synced, "1" when final
-- Returns the number of dirty marks cleared.
local cleared = 0
for j = 0, (#ARGV - 1) / 3 - 1 do
  local id, version, final = ARGV[2 + 3 * j], ARGV[3 + 3 * j], ARGV[4 + 3 * j]
  if final == '1' then
    for k = 2, 5 do redis.call('EXPIRE', KEYS[k + 4 * j], ARGV[1]) end
  end
  if redis.call('HGET', KEYS[1], id) == version then
    redis.call('HDEL', KEYS[1], id)
    cleared = cleared + 1
  end
end
return cleared

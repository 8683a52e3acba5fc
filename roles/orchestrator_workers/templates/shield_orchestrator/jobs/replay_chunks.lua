-- A dead-lettered chunk goes back to its job: the job counts it as pending
-- again (out of the done set, one failure less), leaves "failed" and gets a
-- new generation, so the PostgreSQL row may move back from failed once.
-- KEYS[1] job hash, KEYS[2] the job's done set, KEYS[3] dirty-jobs hash, KEYS[4] the
-- job's duplicates hash (kept as long as the job again)
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] state "failed", ARGV[4] state "processing",
-- ARGV[5..] the chunk indexes replayed
-- Returns the number of chunks taken back (-1 when Redis does not hold the job).
local job, done = KEYS[1], KEYS[2]
if redis.call('EXISTS', job) == 0 then return -1 end
local taken = 0
for i = 5, #ARGV do
  if redis.call('SREM', done, ARGV[i]) == 1 then taken = taken + 1 end
end
if taken == 0 then return 0 end
local failed = tonumber(redis.call('HGET', job, 'chunks_failed') or '0') - taken
if failed < 0 then failed = 0 end
redis.call('HSET', job, 'chunks_failed', failed, 'updated_at', ARGV[1])
if redis.call('HGET', job, 'status') == ARGV[3] then
  redis.call('HSET', job, 'status', ARGV[4])
  redis.call('HDEL', job, 'completed_at', 'error_message', 'first_error')
end
redis.call('HINCRBY', job, 'generation', 1)
redis.call('PERSIST', job)
redis.call('PERSIST', done)
redis.call('PERSIST', KEYS[4])
redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
return taken

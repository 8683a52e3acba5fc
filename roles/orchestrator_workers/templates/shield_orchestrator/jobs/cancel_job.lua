-- Cancel a job that has not finished: its state becomes "cancelled" (final).
-- KEYS[1] job hash, KEYS[2] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] "cancelled", ARGV[4..] the final states
-- Returns {outcome, status, chunks_processed}: outcome 1 when this call
-- cancelled it, 0 when it was already cancelled, -1 when it has finished
-- otherwise (status says how), -2 when Redis does not hold the job.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {-2, '', 0} end
local processed = tonumber(redis.call('HGET', job, 'chunks_processed') or '0')
if status == ARGV[3] then return {0, status, processed} end
for i = 4, #ARGV do
  if status == ARGV[i] then return {-1, status, processed} end
end
redis.call('HSET', job, 'status', ARGV[3], 'completed_at', ARGV[1], 'updated_at', ARGV[1],
  'error_message', 'cancelled; ' .. processed .. ' chunks were already in LightRAG and stay there')
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {1, ARGV[3], processed}

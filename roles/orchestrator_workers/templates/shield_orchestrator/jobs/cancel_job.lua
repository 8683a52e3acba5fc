-- Cancel a job that has not finished: its state becomes "cancelled" (final).
-- KEYS[1] job hash, KEYS[2] dirty-jobs hash, KEYS[3] the job's admitted bitmap
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] "cancelled", ARGV[4..] the final states
-- Returns {outcome, status, chunks_in_lightrag}: outcome 1 when this call
-- cancelled it, 0 when it was already cancelled, -1 when it has finished
-- otherwise (status says how), -2 when Redis does not hold the job.
-- chunks_in_lightrag: the chunks already processed, or handed to LightRAG before
-- the cancel (admit_chunks.lua refuses every later one): what the job ends with.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {-2, '', 0} end
local processed = tonumber(redis.call('HGET', job, 'chunks_processed') or '0')
local admitted = redis.call('BITCOUNT', KEYS[3])
local inside = math.max(processed, admitted)
if status == ARGV[3] then return {0, status, inside} end
for i = 4, #ARGV do
  if status == ARGV[i] then return {-1, status, processed} end
end
redis.call('HSET', job, 'status', ARGV[3], 'completed_at', ARGV[1], 'updated_at', ARGV[1],
  'error_message', 'cancelled; ' .. inside .. ' chunks were in, or on their way into, LightRAG and stay there')
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {1, ARGV[3], inside}

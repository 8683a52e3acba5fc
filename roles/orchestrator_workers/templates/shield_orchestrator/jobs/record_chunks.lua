-- Count the outcomes of some chunks of one job, each chunk once however often it
-- is delivered, and finish the job when every chunk is counted.
-- KEYS[1] job hash, KEYS[2] the job's done set, KEYS[3] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] state "completed", ARGV[4] state "failed",
-- ARGV[5] state "cancelled" (a cancelled job keeps its state; chunks finishing
-- after the cancel are still counted), ARGV[6..] triples: chunk index, "1"
-- (processed) or "0" (failed), error message
-- Returns {counted, processed, failed, total, status, finished}; counted is -1
-- (and nothing changes) when the job hash does not exist.
local job, done, dirty = KEYS[1], KEYS[2], KEYS[3]
local now, job_id, completed, failed_state, cancelled = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('EXISTS', job) == 0 then return {-1, 0, 0, 0, '', 0} end
local ok_new, failed_new, first_error = 0, 0, false
for i = 6, #ARGV, 3 do
  if redis.call('SADD', done, ARGV[i]) == 1 then
    if ARGV[i + 1] == '1' then
      ok_new = ok_new + 1
    else
      failed_new = failed_new + 1
      if not first_error then first_error = ARGV[i + 2] end
    end
  end
end
local processed = redis.call('HINCRBY', job, 'chunks_processed', ok_new)
local failed = redis.call('HINCRBY', job, 'chunks_failed', failed_new)
if first_error and redis.call('HEXISTS', job, 'first_error') == 0 then
  redis.call('HSET', job, 'first_error', first_error)
end
local total = tonumber(redis.call('HGET', job, 'chunks_total'))
local status = redis.call('HGET', job, 'status')
local finished = 0
if processed + failed >= total and status ~= completed and status ~= failed_state and status ~= cancelled then
  if failed > 0 then
    status = failed_state
    local err = redis.call('HGET', job, 'first_error') or 'unknown error'
    redis.call('HSET', job, 'error_message', failed .. ' of ' .. total .. ' chunks failed; first error: ' .. err)
  else
    status = completed
  end
  if redis.call('HEXISTS', job, 'started_at') == 0 then redis.call('HSET', job, 'started_at', now) end
  redis.call('HSET', job, 'status', status, 'completed_at', now)
  finished = 1
end
redis.call('HSET', job, 'updated_at', now)
redis.call('HINCRBY', dirty, job_id, 1)
return {ok_new + failed_new, processed, failed, total, status, finished}

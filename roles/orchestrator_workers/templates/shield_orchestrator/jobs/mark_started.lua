-- Move a queued job to processing (once), and mark it for the PostgreSQL sync.
-- KEYS[1] job hash, KEYS[2] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] state "queued", ARGV[4] state "processing"
-- Returns {started, status}: started is 1 for the one call that started the
-- job; status is the job's state after the call ("" when the job is unknown),
-- so a worker learns in the same round trip that a job was cancelled.
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {0, ''} end
if status ~= ARGV[3] then return {0, status} end
redis.call('HSET', job, 'status', ARGV[4], 'started_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {1, ARGV[4]}

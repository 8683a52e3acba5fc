-- Move a queued job to processing (once), and mark it for the PostgreSQL sync.
-- KEYS[1] job hash, KEYS[2] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] state "queued", ARGV[4] state "processing"
-- Returns 1 when this call started the job, else 0.
local job = KEYS[1]
if redis.call('HGET', job, 'status') ~= ARGV[3] then return 0 end
redis.call('HSET', job, 'status', ARGV[4], 'started_at', ARGV[1], 'updated_at', ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return 1

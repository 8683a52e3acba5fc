-- Count documents a delete job's task removed from the graph, and mark the job for
-- the PostgreSQL sync. Recorded before the task's own outcome, so the job's row
-- holds the count by the time it is final.
-- KEYS[1] job hash, KEYS[2] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, ARGV[3] documents removed, ARGV[4] "1" when
-- the task is a replace job's retire (its chunks may then enter LightRAG: `retired`)
-- Returns the job's count after the call (-1: Redis does not hold the job).
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then return -1 end
local removed = redis.call('HINCRBY', job, 'documents_removed', tonumber(ARGV[3]))
redis.call('HSET', job, 'updated_at', ARGV[1])
if ARGV[4] == '1' then redis.call('HSET', job, 'retired', '1') end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return removed

-- Record chunks of a job whose text LightRAG already held (content duplicates): each
-- chunk index once, with the document that holds its text, and the job's count of
-- them; marks the job for the PostgreSQL sync. Recorded before the chunks' own
-- outcome, so the job's final row holds the count.
-- KEYS[1] job hash, KEYS[2] the job's duplicates hash, KEYS[3] dirty-jobs hash
-- ARGV[1] now (ISO 8601), ARGV[2] job id, then pairs: chunk index, holding document
-- Returns the number of chunks newly recorded (-1: Redis does not hold the job).
local job = KEYS[1]
if redis.call('EXISTS', job) == 0 then return -1 end
local added = 0
for i = 3, #ARGV, 2 do
  added = added + redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1])
end
if added > 0 then
  redis.call('HINCRBY', job, 'chunks_duplicate', added)
  redis.call('HSET', job, 'updated_at', ARGV[1])
  redis.call('HINCRBY', KEYS[3], ARGV[2], 1)
  local ttl = redis.call('PTTL', job)
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return added

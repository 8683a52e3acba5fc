-- Let some chunks of one job enter LightRAG, unless the job was cancelled.
-- KEYS[1] job hash, KEYS[2] the job's admitted bitmap (bit = chunk index)
-- ARGV[1] state "cancelled", ARGV[2..] chunk indexes
-- Returns 1 and sets the chunks' bits when the job is not cancelled; 1 and
-- nothing set when Redis does not hold the job (the chunk's own record decides
-- later, and no key is left without the job's TTL); 1 when every chunk already
-- entered before the cancel (a redelivery); 0 otherwise. A cancel counts the bits
-- (cancel_job.lua): the chunks that are in, or on their way into, LightRAG.
local job, admitted = KEYS[1], KEYS[2]
local status = redis.call('HGET', job, 'status')
if not status then return 1 end
if status == ARGV[1] then
  for i = 2, #ARGV do
    if redis.call('GETBIT', admitted, ARGV[i]) == 0 then return 0 end
  end
  return 1
end
for i = 2, #ARGV do
  redis.call('SETBIT', admitted, ARGV[i], 1)
end
return 1

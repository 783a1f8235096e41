-- KEYS as acquire.lua; ARGV holder, settle, ttl_ms. Ends the holder's hold and adds settle to
-- the settled counter (a new counter expires ttl_ms later). Returns 1 if the hold was open.
local was = redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if tonumber(ARGV[2]) ~= 0 then
  redis.call('INCRBY', KEYS[1], ARGV[2])
  if redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
end
return was

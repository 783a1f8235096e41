-- KEYS[1] counter; ARGV delta, ttl_ms. Adds and returns the new value; a new counter expires ttl_ms later.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return v

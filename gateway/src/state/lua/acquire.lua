-- KEYS[1] settled counter, KEYS[2] holds (zset holder -> expiry ms), KEYS[3] amounts (hash holder -> amount).
-- ARGV holder, amount, limit, ttl_ms. Drops expired holds, then takes the hold if settled + open
-- holds + amount fit the limit. Returns {granted, used, held}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
if #expired > 0 then
  redis.call('HDEL', KEYS[3], unpack(expired))
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
end
local holder, amount, limit, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREM', KEYS[2], holder)
redis.call('HDEL', KEYS[3], holder)
local held = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do held = held + tonumber(v) end
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + held + amount > limit then
  return {0, used, held}
end
redis.call('ZADD', KEYS[2], now + ttl, holder)
redis.call('HSET', KEYS[3], holder, ARGV[2])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
redis.call('PEXPIREAT', KEYS[2], last[2])
redis.call('PEXPIREAT', KEYS[3], last[2])
return {1, used, held + amount}

-- KEYS[1] window (hash s, c, p, w); ARGV limit, window_ms, cost.
-- Sliding-window counter on the server's clock: the current fixed window's count plus the
-- previous window's, weighted by how much of it still overlaps. Returns {allowed, remaining, retry_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, win, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local start = now - (now % win)
local h = redis.call('HMGET', KEYS[1], 's', 'c', 'p', 'w')
local s, c, p, w = tonumber(h[1]) or start, tonumber(h[2]) or 0, tonumber(h[3]) or 0, tonumber(h[4]) or win
if w ~= win or start > s then
  if w == win and start - s == win then p = c else p = 0 end
  c = 0
  s = start
end
local elapsed = (now - s) / win
local used = math.ceil(p * (1 - elapsed)) + c
local allowed, remaining, retry = 0, math.max(limit - used, 0), 0
if used + cost <= limit then
  c = c + cost
  allowed, remaining = 1, limit - used - cost
elseif p > 0 and c + cost <= limit then
  retry = math.ceil(win * math.min((used + cost - limit) / p, 1))
else
  retry = s + win - now
end
redis.call('HSET', KEYS[1], 's', s, 'c', c, 'p', p, 'w', win)
redis.call('PEXPIRE', KEYS[1], 2 * win)
return {allowed, remaining, math.max(retry, allowed == 1 and 0 or 1)}

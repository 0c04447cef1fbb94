-- FORGET_SILENT: take a silent endpoint out of the sign-of-life index, unless it spoke up
-- after the cutoff (then it stays, with its new time).
-- KEYS[1] the sign-of-life index (keys.endpoint_beats)
-- ARGV[1] endpoint id, ARGV[2] cutoff (its last sign of life must be at or before this)
-- Returns 1 if removed.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0

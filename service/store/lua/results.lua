-- RESULTS: store finished tasks reported by an endpoint; each one's lease ends.
-- KEYS[1] the endpoint's queue   KEYS[1+i] the i-th task's hash
-- ARGV[1] endpoint id, ARGV[2] now, ARGV[3] result ttl,
-- then 6 per result: task id, state (success|failed), result, exception, stdout, stderr.
-- Returns {stored, duplicates}: a duplicate is a task already final (a redelivered task
-- finished twice) or not this endpoint's.
local queue = KEYS[1]
local endpoint_id, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local FIRST, STRIDE = 4, 6

local stored, duplicates = 0, 0
for i = 1, #KEYS - 1 do
  local task_key, a = KEYS[1 + i], FIRST + (i - 1) * STRIDE
  local task_id, state = ARGV[a], ARGV[a + 1]
  local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry')
  if (not f[1]) or f[2] ~= endpoint_id or is_final(f[1]) then
    duplicates = duplicates + 1
  else
    redis.call('HSET', task_key, 'result', ARGV[a + 2], 'exc', ARGV[a + 3],
      'stdout', ARGV[a + 4], 'stderr', ARGV[a + 5])
    set_state(task_key, state, now)
    drop_entry(queue, f[3])
    finish(task_key, task_id, ttl, now)
    stored = stored + 1
  end
end
return done({stored, duplicates})

-- RESULTS: store finished tasks reported by an endpoint; each one's lease ends.
-- KEYS[1] the endpoint's queue   KEYS[2] the endpoint's hash   KEYS[3] the sign-of-life index
-- KEYS[3+i] the i-th task's hash
-- ARGV[1] endpoint id, ARGV[2] now, ARGV[3] result ttl, ARGV[4] the reporting agent session,
-- then 7 per result: task id, state (success|failed|cancelled), result, exception, stdout,
-- stderr, when it started on its worker ('' if it did not).
-- Results of a replaced session are good results too; the current session's are also its
-- sign of life. Returns {stored, duplicates, wake channels}: a duplicate is a task already
-- final (a redelivered task finished twice) or not this endpoint's.
local queue, endpoint_key, beats = KEYS[1], KEYS[2], KEYS[3]
local endpoint_id, now, ttl, session = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local FIRST, STRIDE, TASKS = 5, 7, 3

if redis.call('HGET', endpoint_key, 'session') == session then
  redis.call('HSET', endpoint_key, 'last_heartbeat', now)
  redis.call('ZADD', beats, now, endpoint_id)
end

local stored, duplicates = 0, 0
for i = 1, #KEYS - TASKS do
  local task_key, a = KEYS[TASKS + i], FIRST + (i - 1) * STRIDE
  local task_id, state = ARGV[a], ARGV[a + 1]
  local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry', 'group', 't_running')
  if (not f[1]) or f[2] ~= endpoint_id or is_final(f[1]) then
    duplicates = duplicates + 1
  else
    local fields = {'result', ARGV[a + 2], 'exc', ARGV[a + 3], 'stdout', ARGV[a + 4],
      'stderr', ARGV[a + 5]}
    -- A task that ran before its "running" report arrived still has its start time.
    if ARGV[a + 6] ~= '' and not f[5] then
      table.insert(fields, 't_running')
      table.insert(fields, ARGV[a + 6])
    end
    count(f[4], f[1], state)
    drop_entry(queue, f[3])
    finish(task_key, task_id, ttl, now, f[4], state_fields(fields, state, now))
    stored = stored + 1
  end
end
local reply = done({stored, duplicates}, now)
table.insert(reply, woken())
return reply

-- REQUEUE: take leased entries back from a session (reclaimed from a silent or replaced
-- agent, or handed back by a stopping one) and queue their tasks again.
-- KEYS[1] the endpoint's queue   KEYS[1+i] the i-th task's hash
-- ARGV[1] now, ARGV[2] result ttl, ARGV[3] max attempts, ARGV[4] count an attempt (0|1),
-- ARGV[5] the EndpointLost exception envelope,
-- then 2 per entry: entry id, task id.
-- A task that has lost its endpoint `max attempts` times fails with EndpointLost.
-- Returns {requeued, failed}.
local queue = KEYS[1]
local now, ttl, max_attempts, count_attempt, lost =
  ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1', ARGV[5]
local FIRST, STRIDE = 6, 2

local requeued, failed = 0, 0
for i = 1, #KEYS - 1 do
  local task_key, a = KEYS[1 + i], FIRST + (i - 1) * STRIDE
  local entry, task_id = ARGV[a], ARGV[a + 1]
  local f = redis.call('HMGET', task_key, 'state', 'entry', 'cancel', 'group', 'attempts')
  drop_entry(queue, entry)
  if f[1] and not is_final(f[1]) and f[2] == entry
      and not cancelled_on_return(task_key, task_id, ttl, now, f[3], f[1], f[4]) then
    local attempts = tonumber(f[5] or '0')
    if count_attempt then attempts = redis.call('HINCRBY', task_key, 'attempts', 1) end
    if attempts >= max_attempts then
      redis.call('HSET', task_key, 'exc', lost)
      set_state(task_key, 'failed', now)
      finish(task_key, task_id, ttl, now)
      failed = failed + 1
    else
      requeue(task_key, task_id, queue, now)
      requeued = requeued + 1
    end
  end
end
return done({requeued, failed}, now)

-- CANCEL: cancel a task. One no agent holds yet ends cancelled at once; one an agent holds
-- (leased, waiting for nodes, running) is stopped there: the agent learns it with its next
-- lease (the endpoint's set of tasks to stop) and reports it cancelled.
-- KEYS[1] the task's hash
-- ARGV[1] task id, ARGV[2] now, ARGV[3] result ttl, ARGV[4] the TaskCancelled envelope
-- Returns 'cancelled', 'cancelling' (the agent stops it), 'unknown', or the state of a task
-- that has ended already.
local task_key = KEYS[1]
local task_id, now, ttl, envelope = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry')
if not f[1] then return 'unknown' end
if f[1] == 'received' or f[1] == 'waiting-for-endpoint' then
  redis.call('HSET', task_key, 'exc', envelope)
  set_state(task_key, 'cancelled', now)
  drop_entry(key_for(KEY_TEMPLATES.queue, f[2]), f[3])
  finish(task_key, task_id, ttl, now)
  return done('cancelled', now)
end
if f[1] == 'leased' or f[1] == 'running' or f[1] == 'waiting-for-nodes' then
  redis.call('HSET', task_key, 'exc', envelope, 'cancel', '1')
  redis.call('SADD', key_for(KEY_TEMPLATES.cancels, f[2]), task_id)
  wake(KEY_TEMPLATES.wake_queue, f[2])
  return done('cancelling', now)
end
return f[1]

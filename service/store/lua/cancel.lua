-- CANCEL: cancel a task that no agent holds yet.
-- KEYS[1] the task's hash
-- ARGV[1] task id, ARGV[2] now, ARGV[3] result ttl, ARGV[4] the TaskCancelled envelope
-- Returns 'cancelled', 'unknown', or the task's state when it is too late to cancel here.
local task_key = KEYS[1]
local task_id, now, ttl, envelope = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry')
if not f[1] then return 'unknown' end
if f[1] == 'received' or f[1] == 'waiting-for-endpoint' then
  redis.call('HSET', task_key, 'exc', envelope)
  set_state(task_key, 'cancelled', now)
  drop_entry(key_for(KEY_TEMPLATES.queue, f[2]), f[3])
  finish(task_key, task_id, ttl, now)
  return done('cancelled')
end
return f[1]

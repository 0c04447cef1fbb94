-- OVERDUE: end a task found overdue on the endings index: failed with DeadlineExceeded if it
-- has not started by its deadline, with TaskExpired if it has not ended when its record is
-- about to expire. A task that started before its deadline is given its expiry instead.
-- KEYS[1] the task's hash
-- ARGV[1] task id, ARGV[2] now, ARGV[3] result ttl, ARGV[4] expire after (seconds after
-- submission), ARGV[5] the DeadlineExceeded envelope, ARGV[6] the TaskExpired one.
-- Returns 'deadline', 'expired', 'later' (not due yet) or 'gone' (ended, or no record).
local task_key = KEYS[1]
local task_id, now, ttl, expire_after = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]),
  tonumber(ARGV[4])
local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry', 't_received', 'deadline')
if not f[1] or is_final(f[1]) then
  redis.call('ZREM', KEY_TEMPLATES.endings, task_id)
  return 'gone'
end
local expires = tonumber(f[4] or now) + expire_after
local started = f[1] == 'running'
local why
if now >= expires then
  why = 'expired'
elseif f[5] and not started and now >= tonumber(f[5]) then
  why = 'deadline'
else
  redis.call('ZADD', KEY_TEMPLATES.endings, expires, task_id)
  return 'later'
end
redis.call('HSET', task_key, 'exc', why == 'deadline' and ARGV[5] or ARGV[6])
-- An agent holding it is told, as for a cancellation: it stops it if it starts it anyway.
if f[1] ~= 'waiting-for-endpoint' and f[1] ~= 'received' and f[2] then
  redis.call('SADD', key_for(KEY_TEMPLATES.cancels, f[2]), task_id)
  wake(KEY_TEMPLATES.wake_queue, f[2])
end
set_state(task_key, 'failed', now)
drop_entry(key_for(KEY_TEMPLATES.queue, f[2]), f[3])
finish(task_key, task_id, ttl, now)
return done(why, now)

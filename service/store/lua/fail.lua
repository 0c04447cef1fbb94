-- FAIL: end a task that has not ended, as failed with the error given (its endpoint was
-- deleted, say): whether it waits in the queue or an agent holds it, its entry goes and its
-- submitter gets the error on the result stream.
-- KEYS[1] the task's hash
-- ARGV[1] task id, ARGV[2] now, ARGV[3] result ttl, ARGV[4] the error envelope
-- Returns 'failed', 'unknown', or the state of a task that had ended already.
local task_key = KEYS[1]
local task_id, now, ttl, envelope = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local f = redis.call('HMGET', task_key, 'state', 'endpoint', 'entry')
if not f[1] then return 'unknown' end
if is_final(f[1]) then return f[1] end
redis.call('HSET', task_key, 'exc', envelope)
set_state(task_key, 'failed', now)
drop_entry(key_for(KEY_TEMPLATES.queue, f[2]), f[3])
finish(task_key, task_id, ttl, now)
return done('failed', now)

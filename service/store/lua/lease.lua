-- LEASE: hand entries just read from the queue (XREADGROUP) to an agent session.
-- KEYS[1] the endpoint's queue   KEYS[2] the endpoint's hash   KEYS[2+i] the i-th task's hash
-- ARGV[1] session, ARGV[2] now, then 2 per entry: entry id, task id.
-- Returns {stale, tasks}: stale is 0, 1 (another session replaced this one) or 2 (this
-- session went silent and its leases were reclaimed). A stale session gets nothing: what was
-- just delivered to it (a long-poll outliving its agent, or blocked while the agent was silent)
-- goes back on the queue with no attempt counted, or it would be leased to nobody. Each task is
-- {task id, function id, payload, resources, options, attempts, owner}.
local queue, endpoint_key = KEYS[1], KEYS[2]
local session, now = ARGV[1], ARGV[2]
local FIRST, STRIDE = 3, 2

local current = redis.call('HGET', endpoint_key, 'session')
local stale = current ~= session
local out = {}
for i = 1, #KEYS - 2 do
  local task_key, a = KEYS[2 + i], FIRST + (i - 1) * STRIDE
  local entry, task_id = ARGV[a], ARGV[a + 1]
  local state = redis.call('HGET', task_key, 'state')
  if (not state) or is_final(state) or redis.call('HGET', task_key, 'entry') ~= entry then
    drop_entry(queue, entry)  -- expired, finished or cancelled, or an outdated entry
  elseif stale then
    drop_entry(queue, entry)
    requeue(task_key, task_id, queue, now)
  else
    if state ~= 'running' and state ~= 'waiting-for-nodes' then
      set_state(task_key, 'running', now)
    end
    redis.call('HSET', task_key, 'session', session)
    local f = redis.call('HMGET', task_key, 'function', 'payload', 'resources', 'options',
      'attempts', 'owner')
    table.insert(out, {task_id, f[1], f[2], f[3], f[4], f[5], f[6]})
  end
end
local code = 0
if stale then code = ((not current or current == '') and 2 or 1) end
return done({code, out})

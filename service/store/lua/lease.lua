-- LEASE: read new entries of the endpoint's queue for an agent session and lease their tasks,
-- in one step (XREADGROUP inside the script), or lease entries the session already holds
-- (``recover``: the reply of an earlier lease was lost).
-- KEYS[1] the endpoint's queue   KEYS[2] the endpoint's hash   KEYS[3] the sign-of-life index
-- KEYS[4] the endpoint's set of tasks to stop
-- ARGV[1] session, ARGV[2] now, ARGV[3] max tasks, ARGV[4] first read of the request (1|0),
-- ARGV[5] status json ('' for none), ARGV[6] endpoint id, ARGV[7] result ttl,
-- then, to recover, 2 per entry: entry id, task id (no new entries are read then).
-- The session is current (or, with `may resume`, it takes itself back after it expired, as
-- any sign of life does: see TOUCH) or it gets nothing: a long-poll outliving its agent must
-- not lease tasks to nobody; only a request's first read may resume a session, and only it is
-- a sign of life (a poll that waits re-reads, but says nothing of its agent).
-- Leased tasks go from waiting-for-endpoint to leased (a worker starting one makes it running:
-- MARK). The reply also carries the ids of tasks the agent holds whose cancellation was asked
-- for (they stop there).
-- Returns {stale, tasks, cancels}: stale is 0, 1 (another session replaced this one) or 2
-- (this session expired). Each task is {task id, function id, payload, resources, options,
-- attempts, owner}.
local queue, endpoint_key, beats, cancels = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local session, now, max_tasks, first, status, endpoint_id, ttl_result =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4] == '1', ARGV[5], ARGV[6], tonumber(ARGV[7])
local FIRST, STRIDE = 8, 2

local current = redis.call('HGET', endpoint_key, 'session')
if current and current ~= '' and current ~= session then return {1, {}, {}} end
if current ~= session then
  if not first then return {2, {}, {}} end
  redis.call('HSET', endpoint_key, 'session', session)
end
if first then
  redis.call('HSET', endpoint_key, 'last_heartbeat', now)
  redis.call('ZADD', beats, now, endpoint_id)
  if status ~= '' then redis.call('HSET', endpoint_key, 'status', status) end
end

local entries = {}
if #ARGV >= FIRST then
  for a = FIRST, #ARGV, STRIDE do table.insert(entries, {ARGV[a], ARGV[a + 1]}) end
else
  local read = redis.call('XREADGROUP', 'GROUP', CONSUMER_GROUP, session, 'COUNT', max_tasks,
    'STREAMS', queue, '>')
  if read then
    for _, item in ipairs(read[1][2]) do
      local fields = item[2]
      if fields and fields[2] then table.insert(entries, {item[1], fields[2]}) end
    end
  end
end

local out = {}
for _, e in ipairs(entries) do
  local entry, task_id = e[1], e[2]
  local task_key = key_for(KEY_TEMPLATES.task, task_id)
  local f = redis.call('HMGET', task_key, 'state', 'entry', 'cancel', 'group', 'function',
    'payload', 'resources', 'options', 'attempts', 'owner')
  local state, group = f[1], f[4]
  if (not state) or is_final(state) or f[2] ~= entry then
    drop_entry(queue, entry)  -- expired, finished or cancelled, or an outdated entry
  elseif cancelled_on_return(task_key, task_id, ttl_result, now, f[3], state, group) then
    drop_entry(queue, entry)
  else
    local fields = {'session', session}
    if state ~= 'running' and state ~= 'waiting-for-nodes' and state ~= 'leased' then
      state_fields(fields, 'leased', now)
      count(group, state, 'leased')
      state_event(group, 'leased', task_id)
    end
    redis.call('HSET', task_key, unpack(fields))
    table.insert(out, {task_id, f[5], f[6], f[7], f[8], f[9], f[10]})
  end
end
local stop = redis.call('SMEMBERS', cancels)
if #stop > 0 then redis.call('DEL', cancels) end
return done({0, out, stop}, now)

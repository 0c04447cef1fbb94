-- SUBMIT: write a batch of tasks for one endpoint, all or nothing.
-- KEYS[1]    the endpoint's queue          KEYS[2]  the task group's hash
-- KEYS[3]    the task group's task list    KEYS[4]   the owner's task groups (sorted set)
-- KEYS[4+i]  the i-th task's hash
-- ARGV[1] owner, ARGV[2] endpoint id, ARGV[3] group id, ARGV[4] now, ARGV[5] task ttl,
-- ARGV[6] when an unfinished task fails as expired (seconds after submission, under the ttl),
-- then 6 per task: task id, function id, payload, resources (msgpack or ''), options (same),
-- deadline (unix time it must start by, or '').
-- Returns {duplicates, ''}; {-1, why} when the group or a task id belongs to another user.
local queue, group_key, members, owner_groups = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local TASKS = 4  -- KEYS before the first task's
local owner, endpoint_id, group_id, now, ttl, expire_after =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local FIRST, STRIDE = 7, 6

local group_owner = redis.call('HGET', group_key, 'owner')
if group_owner and group_owner ~= owner then return {-1, 'task group belongs to another user'} end
local exists = {}  -- task key -> true: a resent task (the first copy stands)
for i = 1, #KEYS - TASKS do
  local task_owner = redis.call('HGET', KEYS[TASKS + i], 'owner')
  if task_owner and task_owner ~= owner then
    return {-1, 'task id ' .. ARGV[FIRST + (i - 1) * STRIDE] .. ' is taken'}
  end
  if task_owner then exists[KEYS[TASKS + i]] = true end
end

local duplicates, endings, new_ids = 0, {}, {}
for i = 1, #KEYS - TASKS do
  local task_key, a = KEYS[TASKS + i], FIRST + (i - 1) * STRIDE
  local task_id, function_id, payload, resources, options, deadline =
    ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 5]
  if exists[task_key] then
    duplicates = duplicates + 1
  else
    exists[task_key] = true  -- a batch naming it twice: the second is a duplicate
    local entry = redis.call('XADD', queue, '*', 't', task_id)
    local fields = {'owner', owner, 'endpoint', endpoint_id, 'function', function_id,
      'group', group_id, 'payload', payload, 'resources', resources, 'options', options,
      'attempts', '0', 'entry', entry, 't_received', now}
    local ending = tonumber(now) + expire_after
    if deadline ~= '' then
      table.insert(fields, 'deadline')
      table.insert(fields, deadline)
      ending = math.min(ending, tonumber(deadline))
    end
    redis.call('HSET', task_key, unpack(state_fields(fields, 'waiting-for-endpoint', now)))
    count(group_id, false, 'waiting-for-endpoint')
    redis.call('EXPIRE', task_key, ttl)
    table.insert(endings, ending)
    table.insert(endings, task_id)
    table.insert(new_ids, task_id)
  end
end
if #endings > 0 then in_parts('ZADD', KEY_TEMPLATES.endings, endings) end
if #new_ids > 0 then in_parts('RPUSH', members, new_ids) end
write_counts()  -- before their expiry is set: the hash exists then
redis.call('HSET', group_key, 'owner', owner, 'updated', now)
redis.call('ZADD', owner_groups, now, group_id)
redis.call('ZREMRANGEBYSCORE', owner_groups, '-inf', now - ttl)  -- groups expired by now
redis.call('EXPIRE', group_key, ttl)
redis.call('EXPIRE', members, ttl)
redis.call('EXPIRE', key_for(KEY_TEMPLATES.group_counts, group_id), ttl)
wake(KEY_TEMPLATES.wake_queue, endpoint_id)
return done({duplicates, ''}, now)

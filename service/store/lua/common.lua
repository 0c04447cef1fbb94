-- Prepended to every script, after CONSUMER_GROUP and KEY_TEMPLATES (from keys.py).
-- Scripts get the keys they touch in KEYS; keys they only learn while running (a task's group,
-- an endpoint's queue) come from KEY_TEMPLATES, with '{id}' standing for the id.

local function is_final(state)
  return state == 'success' or state == 'failed' or state == 'cancelled'
end

local function key_for(template, id)
  return (string.gsub(template, '{id}', id, 1))
end

-- Wake channels to publish when the script ends (once each, however many tasks touched them):
-- long-polls waiting on them read again (see wakeups.py).
local WAKES = {}
local function wake(template, id)
  WAKES[key_for(template, id)] = true
end
-- A result stream's wake channel -> the last entry this script wrote there: the message says
-- it, so a poll that read past it knows the message brings nothing new.
local WROTE = {}

-- State events for the submitters' result streams: one entry per group and state per script
-- run (however many tasks), read by the SDK's one long-poll (ComputeFuture.status()).
local EVENTS = {}
local function state_event(group, state, task_id)
  if not group then return end
  EVENTS[group] = EVENTS[group] or {}
  EVENTS[group][state] = EVENTS[group][state] or {}
  table.insert(EVENTS[group][state], task_id)
end

-- Writes a script gathers over its tasks and makes once each when it ends (``done``):
-- group counts by state (group -> state -> change), queue entries to drop (queue -> ids), ids
-- to take off the endings index, result streams whose expiry to renew (stream -> ttl).
local COUNTS, DROPS, ENDED, RENEW = {}, {}, {}, {}

-- Lua's `unpack` takes a few thousand values at most: longer lists go in parts (of an even
-- length: ZADD's score-member pairs stay whole).
local PART = 1000
local function in_parts(command, key, list, group)
  for first = 1, #list, PART do
    local last = math.min(first + PART - 1, #list)
    if group then
      redis.call(command, key, group, unpack(list, first, last))
    else
      redis.call(command, key, unpack(list, first, last))
    end
  end
end

-- Write the group counts gathered so far (``done`` does; a script that sets the counts'
-- expiry does first, so the hash exists when it does).
local function write_counts()
  for group, changes in pairs(COUNTS) do
    local counts = key_for(KEY_TEMPLATES.group_counts, group)
    for state, change in pairs(changes) do
      if change ~= 0 then redis.call('HINCRBY', counts, state, change) end
    end
  end
  COUNTS = {}
end

-- End a script: make its gathered writes, write its state events, publish its wake-ups,
-- return `value`.
local function done(value, now)
  write_counts()
  for queue, entries in pairs(DROPS) do
    in_parts('XACK', queue, entries, CONSUMER_GROUP)
    in_parts('XDEL', queue, entries)
  end
  if #ENDED > 0 then in_parts('ZREM', KEY_TEMPLATES.endings, ENDED) end
  for stream, ttl in pairs(RENEW) do redis.call('EXPIRE', stream, ttl) end
  for group, states in pairs(EVENTS) do
    local results = key_for(KEY_TEMPLATES.group_results, group)
    local channel = key_for(KEY_TEMPLATES.wake_results, group)
    for state, ids in pairs(states) do
      WROTE[channel] = redis.call('XADD', results, '*', 'e', state, 'ids',
        table.concat(ids, ','), 'at', now or '0')
    end
    WAKES[channel] = WAKES[channel] or 'e'
  end
  -- 'e': only state events (a poll may leave them for a moment, see wakeups.py), then the
  -- last entry written.
  for channel, what in pairs(WAKES) do
    redis.call('PUBLISH', channel, (what == 'e' and 'e' or '') .. (WROTE[channel] or ''))
  end
  return value
end

-- The wake channels this script published to, for a caller that may hold the polls they wake
-- (it wakes them at once, instead of after the pub/sub message's round trip).
local function woken()
  local out = {}
  for channel, what in pairs(WAKES) do
    if what ~= 'e' then table.insert(out, channel) end
  end
  return out
end

-- Acknowledge and delete a task's queue entry (when the script ends): the task no longer
-- waits for an agent.
local function drop_entry(queue, entry)
  if entry and entry ~= '' then
    DROPS[queue] = DROPS[queue] or {}
    table.insert(DROPS[queue], entry)
  end
end

-- A task of `group` goes from state `old` (false: it had none) to `state`: its group's counts
-- change when the script ends.
local function count(group, old, state)
  if not group then return end
  local changes = COUNTS[group] or {}
  COUNTS[group] = changes
  if old then changes[old] = (changes[old] or 0) - 1 end
  changes[state] = (changes[state] or 0) + 1
end

-- The fields a change to `state` writes, appended to `fields` (for the caller's one HSET).
local function state_fields(fields, state, now)
  table.insert(fields, 'state')
  table.insert(fields, state)
  table.insert(fields, 't_' .. state)
  table.insert(fields, now)
  return fields
end

-- Every state change goes through here (or through `count` and `state_fields`, by a script
-- that read the task's state and group already), so that each state has its timestamp and
-- the task group's counts by state stay right. `old` and `group`: as the caller read them
-- (nil: read here).
local function set_state(task_key, state, now, old, group)
  if old == nil then
    local f = redis.call('HMGET', task_key, 'state', 'group')
    old, group = f[1], f[2]
  end
  redis.call('HSET', task_key, unpack(state_fields({}, state, now)))
  count(group, old, state)
end

-- Put a task back on its endpoint's queue (a new entry): it waits for an agent again.
local function requeue(task_key, task_id, queue, now)
  local entry = redis.call('XADD', queue, '*', 't', task_id)
  redis.call('HSET', task_key, 'entry', entry)
  set_state(task_key, 'waiting-for-endpoint', now)
  redis.call('HDEL', task_key, 'session')
  wake(KEY_TEMPLATES.wake_queue, redis.call('HGET', task_key, 'endpoint'))
end

-- A task reached a final state: drop its inputs, keep the record for `ttl` seconds and tell
-- the submitter through the group's result stream. `group`: as the caller read it (nil: read
-- here); `fields`: more fields to write with the record's (its state's, its result's).
local function finish(task_key, task_id, ttl, now, group, fields)
  group = group or redis.call('HGET', task_key, 'group')
  fields = fields or {}
  table.insert(fields, 'completed')
  table.insert(fields, '1')
  table.insert(fields, 't_completed')
  table.insert(fields, now)
  redis.call('HSET', task_key, unpack(fields))
  redis.call('HDEL', task_key, 'cancel', 'payload', 'session')
  redis.call('EXPIRE', task_key, ttl)
  table.insert(ENDED, task_id)
  local results = key_for(KEY_TEMPLATES.group_results, group)
  local channel = key_for(KEY_TEMPLATES.wake_results, group)
  WROTE[channel] = redis.call('XADD', results, '*', 't', task_id)
  RENEW[results] = ttl
  WAKES[channel] = true
end

-- A task whose cancellation was asked for while an agent held it, and that comes back
-- unfinished (handed back, reclaimed): it ends here, cancelled. True if it was. `cancel`,
-- `old`, `group`: its fields as the caller read them (nil: read here).
local function cancelled_on_return(task_key, task_id, ttl, now, cancel, old, group)
  if cancel == nil then cancel = redis.call('HGET', task_key, 'cancel') end
  if cancel ~= '1' then return false end
  if old == nil then
    local f = redis.call('HMGET', task_key, 'state', 'group')
    old, group = f[1], f[2]
  end
  count(group, old, 'cancelled')
  finish(task_key, task_id, ttl, now, group, state_fields({}, 'cancelled', now))
  return true
end

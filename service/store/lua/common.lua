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

-- End a script: write its state events, publish its wake-ups, return `value`.
local function done(value, now)
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

-- Acknowledge and delete a task's queue entry: the task no longer waits for an agent.
local function drop_entry(queue, entry)
  if entry and entry ~= '' then
    redis.call('XACK', queue, CONSUMER_GROUP, entry)
    redis.call('XDEL', queue, entry)
  end
end

-- Every state change goes through here, so that each state has its timestamp and the task
-- group's counts by state stay right.
local function set_state(task_key, state, now)
  local f = redis.call('HMGET', task_key, 'state', 'group')
  redis.call('HSET', task_key, 'state', state, 't_' .. state, now)
  if f[2] then
    local counts = key_for(KEY_TEMPLATES.group_counts, f[2])
    if f[1] then redis.call('HINCRBY', counts, f[1], -1) end
    redis.call('HINCRBY', counts, state, 1)
  end
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
-- the submitter through the group's result stream.
local function finish(task_key, task_id, ttl, now)
  redis.call('HDEL', task_key, 'cancel')
  redis.call('ZREM', KEY_TEMPLATES.endings, task_id)
  local group = redis.call('HGET', task_key, 'group')
  redis.call('HSET', task_key, 'completed', '1', 't_completed', now)
  redis.call('HDEL', task_key, 'payload', 'session')
  redis.call('EXPIRE', task_key, ttl)
  local results = key_for(KEY_TEMPLATES.group_results, group)
  local channel = key_for(KEY_TEMPLATES.wake_results, group)
  WROTE[channel] = redis.call('XADD', results, '*', 't', task_id)
  redis.call('EXPIRE', results, ttl)
  WAKES[channel] = true
end

-- A task whose cancellation was asked for while an agent held it, and that comes back
-- unfinished (handed back, reclaimed): it ends here, cancelled. True if it was.
local function cancelled_on_return(task_key, task_id, ttl, now)
  if redis.call('HGET', task_key, 'cancel') ~= '1' then return false end
  set_state(task_key, 'cancelled', now)
  finish(task_key, task_id, ttl, now)
  return true
end

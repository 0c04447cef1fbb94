-- READ_RESULTS: the next entries of a task group's result stream, with their task records,
-- in one step.
-- KEYS[1] the group's result stream
-- ARGV[1] cursor (the last entry id read), ARGV[2] most entries, then the task hash fields
-- to return.
-- Returns {last entry id, {{task id, field values...}, ...}}, or {cursor, {}} if none.
local stream, cursor, count = KEYS[1], ARGV[1], ARGV[2]
local FIELDS = 3
local read = redis.call('XREAD', 'COUNT', count, 'STREAMS', stream, cursor)
if not read then return {cursor, {}} end
local fields = {}
for a = FIELDS, #ARGV do table.insert(fields, ARGV[a]) end
local out, last = {}, cursor
for _, item in ipairs(read[1][2]) do
  last = item[1]
  local task_id = item[2][2]
  local values = redis.call('HMGET', key_for(KEY_TEMPLATES.task, task_id), unpack(fields))
  table.insert(values, 1, task_id)
  table.insert(out, values)
end
return {last, out}

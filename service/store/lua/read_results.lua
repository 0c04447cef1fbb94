-- READ_RESULTS: the next entries of a task group's result stream: finished tasks with their
-- records, state events (tasks leased, waiting for nodes, running) and live output, in one step.
-- KEYS[1] the group's result stream
-- ARGV[1] cursor (the last entry id read), ARGV[2] most entries, then the task hash fields
-- to return.
-- Returns {last entry id, {{task id, field values...}, ...}, {{state, ids, at}, ...},
-- {{task id, seq, stream, text, at}, ...}, entries read}: fewer entries than asked for means
-- the stream held nothing more.
local stream, cursor, count = KEYS[1], ARGV[1], ARGV[2]
local FIELDS = 3
local read = redis.call('XREAD', 'COUNT', count, 'STREAMS', stream, cursor)
if not read then return {cursor, {}, {}, {}, 0} end
local fields = {}
for a = FIELDS, #ARGV do table.insert(fields, ARGV[a]) end
local out, events, output, last = {}, {}, {}, cursor
for _, item in ipairs(read[1][2]) do
  last = item[1]
  local entry = {}
  for i = 1, #item[2], 2 do entry[item[2][i]] = item[2][i + 1] end
  if entry.t then
    local values = redis.call('HMGET', key_for(KEY_TEMPLATES.task, entry.t), unpack(fields))
    table.insert(values, 1, entry.t)
    table.insert(out, values)
  elseif entry.e then
    table.insert(events, {entry.e, entry.ids or '', entry.at or '0'})
  elseif entry.o then
    table.insert(output, {entry.o, entry.seq or '0', entry.s or 'stdout', entry.x or '',
      entry.at or '0'})
  end
end
return {last, out, events, output, #read[1][2]}

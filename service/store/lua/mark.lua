-- MARK: an agent reports that leased tasks wait for nodes (no worker yet) or run (a worker
-- started them: where, in the task's 'worker' field).
-- KEYS[i] the i-th task's hash
-- ARGV[1] state (waiting-for-nodes|running), ARGV[2] now, ARGV[3] endpoint id,
-- then 1 per task: its worker (json: host, pid; '' for none).
-- Only tasks of this endpoint that it holds (leased, waiting-for-nodes, running) change; each
-- change is a state event on its group's result stream. Returns how many changed.
local state, now, endpoint_id = ARGV[1], ARGV[2], ARGV[3]
local FIRST = 4
local changed = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'endpoint', 'group')
  local held = f[1] == 'leased' or f[1] == 'running' or f[1] == 'waiting-for-nodes'
  if f[2] == endpoint_id and held and f[1] ~= state then
    local fields = state_fields({}, state, now)
    local worker = ARGV[FIRST + i - 1]
    if worker and worker ~= '' then
      table.insert(fields, 'worker')
      table.insert(fields, worker)
    end
    redis.call('HSET', KEYS[i], unpack(fields))
    count(f[3], f[1], state)
    state_event(f[3], state, string.match(KEYS[i], '[^:]+$'))
    changed = changed + 1
  end
end
return done(changed, now)

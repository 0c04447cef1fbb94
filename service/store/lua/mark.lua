-- MARK: an agent reports that leased tasks wait for nodes (no worker yet) or run.
-- KEYS[i] the i-th task's hash
-- ARGV[1] state (waiting-for-nodes|running), ARGV[2] now, ARGV[3] endpoint id
-- Only tasks of this endpoint that are leased (running or waiting-for-nodes) change.
-- Returns how many changed.
local state, now, endpoint_id = ARGV[1], ARGV[2], ARGV[3]
local changed = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'endpoint')
  if f[2] == endpoint_id and (f[1] == 'running' or f[1] == 'waiting-for-nodes')
      and f[1] ~= state then
    set_state(KEYS[i], state, now)
    changed = changed + 1
  end
end
return changed

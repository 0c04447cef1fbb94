-- TOUCH: a sign of life of an agent session (a heartbeat, or any request of the agent).
-- KEYS[1] the endpoint's hash   KEYS[2] the sign-of-life index (keys.endpoint_beats)
-- ARGV[1] session, ARGV[2] now, ARGV[3] status (json; optional), ARGV[4] endpoint id
-- Records liveness if the session is the current one, or takes it back if it had expired
-- (went silent, leases reclaimed) and no other agent connected since. Returns 0 if another
-- session replaced this one, else 1.
local endpoint_key, beats = KEYS[1], KEYS[2]
local session, now, status, endpoint_id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local current = redis.call('HGET', endpoint_key, 'session')
if current and current ~= '' and current ~= session then return 0 end
redis.call('HSET', endpoint_key, 'session', session, 'last_heartbeat', now)
redis.call('ZADD', beats, now, endpoint_id)
if status ~= '' then redis.call('HSET', endpoint_key, 'status', status) end
return 1

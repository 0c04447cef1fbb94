-- EXPIRE_SESSION: a session went silent (no sign of life since `silent_before`), or stops:
-- end it, so that a long-poll it left blocked in the service cannot take back the tasks about
-- to be reclaimed from it.
-- KEYS[1] the endpoint's hash
-- ARGV[1] session, ARGV[2] silent_before
-- Returns 1 if the session was ended, 0 if it is not the current one or spoke up since.
local endpoint_key = KEYS[1]
local session, silent_before = ARGV[1], tonumber(ARGV[2])
local f = redis.call('HMGET', endpoint_key, 'session', 'last_heartbeat')
if f[1] ~= session or (f[2] and tonumber(f[2]) > silent_before) then return 0 end
redis.call('HSET', endpoint_key, 'session', '')
return 1

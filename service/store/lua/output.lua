-- OUTPUT: an agent's batches of live output of running tasks (stream_output), appended to each
-- task's group result stream, where the submitter's long-poll reads them with the state events.
-- KEYS[i] the i-th batch's task hash
-- ARGV[1] now, ARGV[2] endpoint id, ARGV[3] most characters a task may stream (the rest is
-- dropped, with one notice), then 2 per batch: its seq, its items (JSON [[stream, text], ...]).
-- Only tasks of this endpoint that it holds take output. Returns how many batches were kept.
local now, endpoint_id, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local FIRST, STRIDE = 4, 2
local kept = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'state', 'endpoint', 'group', 'out_bytes')
  local held = f[1] == 'leased' or f[1] == 'running' or f[1] == 'waiting-for-nodes'
  local used = tonumber(f[4] or '0')
  if f[2] == endpoint_id and held and f[3] and used < limit then
    local seq = ARGV[FIRST + (i - 1) * STRIDE]
    local items = cjson.decode(ARGV[FIRST + (i - 1) * STRIDE + 1])
    local results = key_for(KEY_TEMPLATES.group_results, f[3])
    local task_id = string.match(KEYS[i], '[^:]+$')
    for _, item in ipairs(items) do
      local stream, text = item[1], item[2]
      if used + #text > limit then
        text = string.sub(text, 1, limit - used) ..
          '\n[fedcompute: live output cut at ' .. limit .. ' bytes]\n'
      end
      used = used + #text
      WROTE[key_for(KEY_TEMPLATES.wake_results, f[3])] = redis.call(
        'XADD', results, '*', 'o', task_id, 'seq', seq, 's', stream, 'x', text, 'at', now)
      if used >= limit then break end
    end
    redis.call('HSET', KEYS[i], 'out_bytes', used)
    WAKES[key_for(KEY_TEMPLATES.wake_results, f[3])] = true
    kept = kept + 1
  end
end
return done(kept, now)

-- DELCONSUMER: forget a consumer (an ended agent session) of an endpoint's queue, only if
-- nothing is pending for it: XGROUP DELCONSUMER drops its pending entries, and an entry
-- delivered after its leases were reclaimed (a long-poll outliving its agent) would be lost.
-- KEYS[1] the endpoint's queue
-- ARGV[1] consumer (session)
-- Returns 1 if deleted.
local queue, consumer = KEYS[1], ARGV[1]
if #redis.call('XPENDING', queue, CONSUMER_GROUP, '-', '+', 1, consumer) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', queue, CONSUMER_GROUP, consumer)
  return 1
end
return 0

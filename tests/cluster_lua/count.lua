-- Test script of tests/test_cluster_client.py: INCR every key; the first key's new count.
local first = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do
  redis.call('INCR', KEYS[i])
end
return first

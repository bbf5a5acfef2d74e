"""The bucket the tests' money keys are in: the only one (service/redis/keyspace.py)."""

from service.redis import keyspace

assert keyspace.BUCKETS == 1
BUCKET = 0

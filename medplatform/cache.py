"""Django's Redis cache backend, with one Redis client object per server instead of one per call,
and rate-limit counting in one round trip.

Django's ``RedisCacheClient.get_client`` builds a new ``redis.Redis`` for every cache operation,
and redis-py fills each new client's table of response callbacks (about 170 entries): around a
tenth of a millisecond per operation, more than the round trip to Redis itself. API requests
make several cache operations (rate-limit counter, token, model), so the platform keeps the
client. A ``redis.Redis`` on a connection pool is safe to share between threads, and Django
already gives each thread its own cache object.
"""

from __future__ import annotations

from django.core.cache.backends import redis as django_redis

# INCR, then start the window (a TTL) if the counter has none: atomic, as scripts are. A counter
# can never be left without a TTL, which would lock its client out for good.
_COUNT_IN_WINDOW = """
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  left = tonumber(ARGV[1])
  redis.call('PEXPIRE', KEYS[1], left)
end
return {count, left}
"""


class RedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._clients = {}
        self._count_script = None  # on the write server, as every counter is

    def get_client(self, key=None, *, write=False):
        index = self._get_connection_pool_index(write)
        client = self._clients.get(index)
        if client is None:
            if index not in self._pools:
                self._pools[index] = self._pool_class.from_url(
                    self._servers[index], **self._pool_options
                )
            client = self._clients[index] = self._client(connection_pool=self._pools[index])
        return client

    def count_in_window(self, key: str, milliseconds: int) -> tuple[int, int]:
        if self._count_script is None:  # registered once: calls send its sha1, not its text
            self._count_script = self.get_client(key, write=True).register_script(_COUNT_IN_WINDOW)
        count, left = self._count_script(keys=[key], args=[milliseconds])
        return int(count), int(left)


class RedisCache(django_redis.RedisCache):
    """``django.core.cache.backends.redis.RedisCache`` using :class:`RedisCacheClient`."""

    def __init__(self, server, params):
        super().__init__(server, params)
        self._class = RedisCacheClient

    def count_in_window(self, key: str, seconds: float, version=None) -> tuple[int, float]:
        """Count one request under ``key``: the count in its current window, this request
        included, and the seconds until the window ends (``seconds`` from its first request)."""
        key = self.make_and_validate_key(key, version=version)
        count, left_ms = self._cache.count_in_window(key, max(1, round(seconds * 1000)))
        return count, left_ms / 1000

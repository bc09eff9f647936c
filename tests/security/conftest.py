"""Caches for the security tests: the suite's Redis server, and one that cannot be reached."""

from __future__ import annotations

import socket
import uuid

import pytest
from django.core.cache import caches


@pytest.fixture
def redis_cache(redis_broker, settings):
    """The default cache on the suite's Redis server (the embedded one, or REDIS_URL in CI)."""
    from medplatform import settings as production
    from medplatform.cache import RedisCache

    location = production._redis_cache_location() or redis_broker
    if location.startswith("redis+socket://"):
        location = "unix://" + location.removeprefix("redis+socket://")
    settings.CACHES = {"default": {"BACKEND": "medplatform.cache.RedisCache", "LOCATION": location,
                                   "KEY_PREFIX": f"rates-{uuid.uuid4().hex[:8]}"}}
    assert isinstance(caches["default"], RedisCache)
    return caches["default"]._cache.get_client(write=True)


@pytest.fixture
def unreachable_cache(settings):
    """The default cache on a Redis address where nothing listens (connections are refused)."""
    with socket.socket() as probe:  # a port that was just free, closed again
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.CACHES = {"default": {
        "BACKEND": "medplatform.cache.RedisCache", "LOCATION": f"redis://127.0.0.1:{port}/0",
        "OPTIONS": {"socket_connect_timeout": 0.1, "socket_timeout": 0.1},
    }}
    return port

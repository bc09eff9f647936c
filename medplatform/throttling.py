"""The API's rate limits (429 beyond them), counted in fixed windows in the default cache.

Django REST framework's stock throttles keep, per client, the list of every request time in the
last window and rewrite it on each request: at a generous rate (``1200/min``) that list holds
thousands of entries, pickled and sent to Redis twice per request. These count instead: one
integer per client that expires when its window ends, the window starting at the client's first
request. A client may make up to twice the rate across two adjacent windows, the usual trade of
fixed windows.

With Redis, counting is one round trip: a server-side script increments the counter, starts its
window if it has none, and returns the count with the time left (the ``Retry-After`` of a 429),
all atomically. Other caches (the in-process one of a platform without Redis) count with
``add``/``incr`` and keep the window's end beside the counter.

Rates are read from the settings on every request, so a rate changed in the settings (an
override in a test, for instance) applies at once. Counts live in the default cache, shared by
every web process when that cache is Redis. A cache that cannot be reached does not fail the
request: it is let through, with a warning in the log.
"""

from __future__ import annotations

import logging
import time

from django.core.cache import cache
from rest_framework import throttling
from rest_framework.settings import api_settings

logger = logging.getLogger(__name__)


def count_in_window(key: str, seconds: float) -> tuple[int, float]:
    """Count one request under ``key``: the requests counted in its current window, this one
    included, and the seconds until that window ends (a window starts at its first request)."""
    if hasattr(cache, "count_in_window"):  # medplatform.cache.RedisCache: one round trip
        return cache.count_in_window(key, seconds)
    try:
        count = cache.incr(key)
    except ValueError:  # the first request of a window starts it
        if cache.add(key, 1, timeout=seconds):
            cache.set(f"{key}:ends", time.time() + seconds, timeout=seconds)
            return 1, seconds
        count = cache.incr(key)  # a concurrent request just started it
    ends = cache.get(f"{key}:ends")
    return count, seconds if ends is None else max(0.0, ends - time.time())


class _FixedWindowThrottle(throttling.SimpleRateThrottle):
    @property
    def THROTTLE_RATES(self):  # the name DRF's throttles look up
        return api_settings.DEFAULT_THROTTLE_RATES

    def allow_request(self, request, view) -> bool:
        if self.rate is None:
            return True
        self.key = self.get_cache_key(request, view)
        if self.key is None:
            return True
        try:
            count, self.seconds_left = count_in_window(self.key, self.duration)
        except Exception as exc:  # an unreachable cache must not take the API down with it
            logger.warning("rate limit %s not counted: %s", self.scope, exc)
            return True
        return count <= self.num_requests

    def wait(self) -> float:
        """Seconds until the current window ends and requests are counted afresh."""
        return self.seconds_left


class AnonRateThrottle(_FixedWindowThrottle, throttling.AnonRateThrottle):
    """Requests without credentials, counted per client address (``API_THROTTLE_ANON``)."""


class UserRateThrottle(_FixedWindowThrottle, throttling.UserRateThrottle):
    """Authenticated requests, counted per user (``API_THROTTLE_USER``)."""

"""The API's rate limits (429 beyond them), counted in fixed windows in the default cache.

Django REST framework's stock throttles keep, per client, the list of every request time in the
last window and rewrite it on each request: at a generous rate (``1200/min``) that list holds
thousands of entries, pickled and sent to Redis twice per request. These count instead: one
integer per client (``cache.incr``, atomic in Redis) that expires when its window ends, the
window starting at the client's first request; a request costs one cache operation whatever the
rate. A client may make up to twice the rate across two adjacent windows, the usual trade of
fixed windows.

Rates are read from the settings on every request, so a rate changed in the settings (an
override in a test, for instance) applies at once. Counts live in the default cache, shared by
every web process when that cache is Redis.
"""

from __future__ import annotations

import time

from django.core.cache import cache
from rest_framework import throttling
from rest_framework.settings import api_settings


class _FixedWindowThrottle(throttling.SimpleRateThrottle):
    cache = cache

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
            count = self.cache.incr(self.key)
        except ValueError:  # the first request of a window starts it
            ends = time.time() + self.duration
            if self.cache.add(self.key, 1, timeout=self.duration):
                self.cache.set(f"{self.key}:ends", ends, timeout=self.duration)
                count = 1
            else:  # a concurrent request just started it
                count = self.cache.incr(self.key)
        return count <= self.num_requests

    def wait(self) -> float:
        """Seconds until the current window ends and requests are counted afresh."""
        ends = self.cache.get(f"{self.key}:ends")
        return self.duration if ends is None else max(0.0, ends - time.time())


class AnonRateThrottle(_FixedWindowThrottle, throttling.AnonRateThrottle):
    """Requests without credentials, counted per client address (``API_THROTTLE_ANON``)."""


class UserRateThrottle(_FixedWindowThrottle, throttling.UserRateThrottle):
    """Authenticated requests, counted per user (``API_THROTTLE_USER``)."""

"""The API's rate limits (429 beyond them), read from the settings on every request.

Django REST framework's throttles copy ``DEFAULT_THROTTLE_RATES`` when their module is imported;
these read it when asked, so a rate changed in the settings (an override in a test, for
instance) applies at once. Counts live in the default cache, shared by every web process when
that cache is Redis.
"""

from __future__ import annotations

from rest_framework import throttling
from rest_framework.settings import api_settings


class _CurrentRates:
    @property
    def THROTTLE_RATES(self):  # the name DRF's throttles look up
        return api_settings.DEFAULT_THROTTLE_RATES


class AnonRateThrottle(_CurrentRates, throttling.AnonRateThrottle):
    """Requests without credentials, counted per client address (``API_THROTTLE_ANON``)."""


class UserRateThrottle(_CurrentRates, throttling.UserRateThrottle):
    """Authenticated requests, counted per user (``API_THROTTLE_USER``)."""

"""Slowing down password guessing: failed log-ins lock a username, and an address, for a while.

Every password check goes through :func:`django.contrib.auth.authenticate`, which reports each
failure with the ``user_login_failed`` signal. Failures are counted in the cache (Redis in
production, so every web process shares the counts) per username and per client address, in a
fixed window. When a count reaches its limit the username (or the address) is locked:

* :class:`LockoutBackend`, first in ``AUTHENTICATION_BACKENDS``, refuses every password check
  for a locked username or address, so even the right password is refused until the lock ends;
* the site's and the admin's log-in forms say so (the site's page answers 429);
* ``POST /api/v1/auth/token/`` answers 429 with a ``Retry-After`` header.

A successful log-in clears the username's count. The address count is left to expire, so one
valid account cannot be used to reset the counter of an address that guesses other passwords.

The limits are settings (see ``LOGIN_LOCKOUT_*`` in ``medplatform/settings.py``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle

KEY_PREFIX = "login-lockout"
LOCKED_MESSAGE = ("Too many failed log-in attempts. Log-in is locked for %(minutes)d more "
                  "minute(s); try again later.")


# --- Counting and locking ----------------------------------------------------------------------


def _limit(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def client_address(request) -> str:
    """The client's address, read as the API's rate limits read it (``NUM_PROXIES`` aware)."""
    if request is None:
        return ""
    return BaseThrottle().get_ident(request) or ""


def _key(kind: str, value: str, what: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{KEY_PREFIX}:{what}:{kind}:{digest}"


def _subjects(request, username) -> list[tuple[str, str, int]]:
    """``(kind, value, limit)`` for each counter a log-in attempt belongs to."""
    subjects = []
    if isinstance(username, str) and username.strip():
        subjects.append(("user", username.strip().casefold(), _limit("LOGIN_LOCKOUT_FAILURES", 5)))
    address = client_address(request)
    if address:
        subjects.append(("address", address, _limit("LOGIN_LOCKOUT_ADDRESS_FAILURES", 20)))
    return subjects


def locked_for(request, username) -> int:
    """Seconds left on a lock of this username or of the request's address (0: not locked)."""
    now = time.time()
    remaining = 0.0
    for kind, value, _ in _subjects(request, username):
        until = cache.get(_key(kind, value, "until"))
        if until is not None:
            remaining = max(remaining, float(until) - now)
    return math.ceil(remaining) if remaining > 0 else 0


def register_failure(request, username) -> None:
    """Count one failed attempt; lock each subject whose count reaches its limit."""
    window = _limit("LOGIN_LOCKOUT_WINDOW", 15 * 60)
    duration = _limit("LOGIN_LOCKOUT_DURATION", 15 * 60)
    for kind, value, limit in _subjects(request, username):
        key = _key(kind, value, "failures")
        cache.add(key, 0, timeout=window)  # the window starts at the first failure
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=window)
            count = 1
        if count >= limit:
            cache.set(_key(kind, value, "until"), time.time() + duration, timeout=duration)
            cache.delete(key)


def reset(username) -> None:
    """Forget a username's failures (after a successful log-in)."""
    if isinstance(username, str) and username.strip():
        cache.delete(_key("user", username.strip().casefold(), "failures"))


def locked_message(seconds: int) -> str:
    return LOCKED_MESSAGE % {"minutes": max(1, math.ceil(seconds / 60))}


@receiver(user_login_failed, dispatch_uid="medplatform.auth.count_failure")
def _count_failure(sender, credentials, request=None, **kwargs):
    username = credentials.get("username")
    if not locked_for(request, username):  # attempts while locked neither count nor extend it
        register_failure(request, username)


@receiver(user_logged_in, dispatch_uid="medplatform.auth.reset_on_login")
def _reset_on_login(sender, request, user, **kwargs):
    reset(user.get_username())


class LockoutBackend:
    """Refuses any password check for a locked username or address (so the right one fails too).

    It authenticates nobody itself; listed first, it stops ``authenticate`` before the backends
    that check passwords. Importing it also connects the failure counter above. It has no
    ``get_user``, so no session is ever tied to it (``force_login`` skips it too).
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is not None and locked_for(request, username):
            raise PermissionDenied("log-in is locked after too many failed attempts")
        return None


# --- Log-in forms and views --------------------------------------------------------------------


class LockoutFormMixin:
    """Says that log-in is locked instead of "wrong password", before and after checking."""

    def clean(self):
        username = self.cleaned_data.get("username")
        self._refuse_if_locked(username)
        try:
            return super().clean()
        except forms.ValidationError:
            self._refuse_if_locked(username)  # this very failure may have set the lock
            raise

    def _refuse_if_locked(self, username) -> None:
        seconds = locked_for(self.request, username)
        if seconds:
            self.locked = True
            raise forms.ValidationError(locked_message(seconds), code="locked")

    @property
    def is_locked(self) -> bool:
        return getattr(self, "locked", False)


class LockoutAuthenticationForm(LockoutFormMixin, AuthenticationForm):
    pass


class LockoutAdminAuthenticationForm(LockoutFormMixin, AdminAuthenticationForm):
    pass


class LoginView(auth_views.LoginView):
    """The site's log-in page; answers 429 while the username or address is locked."""

    authentication_form = LockoutAuthenticationForm

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if form.is_locked:
            response.status_code = status.HTTP_429_TOO_MANY_REQUESTS
        return response


class ObtainAuthTokenView(ObtainAuthToken):
    """``POST username, password`` → ``{"token": ...}``; 429 while log-in is locked."""

    throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES

    def _locked(self, seconds: int) -> Response:
        return Response({"detail": locked_message(seconds)}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                        headers={"Retry-After": str(seconds)})

    @extend_schema(
        request=AuthTokenSerializer,
        responses={
            200: OpenApiResponse(description="The user's token: {\"token\": \"...\"}"),
            400: OpenApiResponse(description="Wrong username or password"),
            429: OpenApiResponse(description="Too many failed attempts or requests; see Retry-After"),
        },
    )
    def post(self, request, *args, **kwargs):
        data = request.data if isinstance(request.data, Mapping) else {}
        username = data.get("username")
        seconds = locked_for(request, username)
        if seconds:
            return self._locked(seconds)
        serializer = self.get_serializer(data=request.data)
        if not serializer.is_valid():
            seconds = locked_for(request, username)
            if seconds:
                return self._locked(seconds)
            return Response(serializer.errors, status=status.HTTP_400_BAD_REQUEST)
        user = serializer.validated_data["user"]
        reset(user.get_username())
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

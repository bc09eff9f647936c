"""Slowing down password guessing, and the API token's life: obtaining, rotating, revoking.

Every password check goes through :func:`django.contrib.auth.authenticate`, which reports each
failure with the ``user_login_failed`` signal. Failures are counted in the cache (Redis in
production, so every web process shares the counts) in a fixed window, three ways:

* per username *and* client address (``LOGIN_LOCKOUT_FAILURES``, 5): the lock that a guesser
  meets. It locks that username from that address only, so nobody can lock another person out
  of their account (the default ``admin`` included) by failing to log in as them from elsewhere;
* per username from every address (``LOGIN_LOCKOUT_USERNAME_FAILURES``, default ten times the
  above): a backstop against guessing one password from many addresses. One address adds at
  most ``LOGIN_LOCKOUT_FAILURES`` to it before its own lock stops it counting, so reaching it
  takes ten addresses or more;
* per client address (``LOGIN_LOCKOUT_ADDRESS_FAILURES``, 20): one address guessing many
  usernames.

When a count reaches its limit that subject is locked:

* :class:`LockoutBackend`, first in ``AUTHENTICATION_BACKENDS``, refuses every password check
  of a locked subject, so even the right password is refused until the lock ends;
* the site's and the admin's log-in forms say so (the site's page answers 429);
* ``POST /api/v1/auth/token/`` answers 429 with a ``Retry-After`` header.

A successful log-in clears the count of that username at that address. The username's count
from every address and the address count are left to expire, so one valid account cannot reset
the count of an address that guesses other passwords. ``manage.py unlock_login <username>``
clears a username's locks and counts, from every address.

The lockout never takes log-in down: when the cache cannot be reached, passwords are checked
without it and a warning is logged, as the API's rate limits do (``medplatform/throttling.py``).

The limits are settings (see ``LOGIN_LOCKOUT_*`` in ``medplatform/settings.py``).

API tokens: ``POST /api/v1/auth/token/`` (username, password) gives the user's token,
``POST /api/v1/auth/token/rotate/`` replaces it with a new one and ``DELETE /api/v1/auth/token/``
revokes it; changing a user's password revokes it too. A token is deleted through the ORM, so
``medplatform.authentication`` drops it from the shared cache and the next request with it gets
401.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Mapping

from django import forms
from django.conf import settings
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models.signals import post_save
from django.dispatch import receiver
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

logger = logging.getLogger(__name__)

KEY_PREFIX = "login-lockout"
LOCKED_MESSAGE = ("Too many failed log-in attempts. Log-in is locked for %(minutes)d more "
                  "minute(s); try again later.")


# --- Counting and locking ----------------------------------------------------------------------


def _limit(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def _username_limit() -> int:
    return _limit("LOGIN_LOCKOUT_USERNAME_FAILURES", 10 * _limit("LOGIN_LOCKOUT_FAILURES", 5))


def client_address(request) -> str:
    """The client's address, read as the API's rate limits read it (``NUM_PROXIES`` aware)."""
    if request is None:
        return ""
    return BaseThrottle().get_ident(request) or ""


def _key(kind: str, value: str, what: str) -> str:
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{KEY_PREFIX}:{what}:{kind}:{digest}"


def _username(username) -> str:
    return username.strip().casefold() if isinstance(username, str) else ""


def _epoch_key(name: str) -> str:
    return _key("user", name, "epoch")


def _subjects(request, username) -> list[tuple[str, str, int]]:
    """``(kind, value, limit)`` for each counter a log-in attempt belongs to (reads the cache).

    The per-address counters of a username include its *epoch*, which ``unlock_login`` renews:
    the counters of every address are forgotten at once without having to find them.
    """
    subjects = []
    address = client_address(request)
    name = _username(username)
    if name:
        epoch = cache.get(_epoch_key(name), "")
        subjects.append(("user-at-address", f"{epoch}\n{name}\n{address}",
                         _limit("LOGIN_LOCKOUT_FAILURES", 5)))
        subjects.append(("user", name, _username_limit()))
    if address:
        subjects.append(("address", address, _limit("LOGIN_LOCKOUT_ADDRESS_FAILURES", 20)))
    return subjects


def locked_for(request, username) -> int:
    """Seconds left on a lock of this username here or everywhere, or of the request's address
    (0: not locked, or the cache cannot be reached)."""
    try:
        keys = [_key(kind, value, "until") for kind, value, _ in _subjects(request, username)]
        locks = cache.get_many(keys)
    except Exception as exc:  # an unreachable cache must not take log-in down with it
        logger.warning("log-in lockout not checked: %s", exc)
        return 0
    remaining = max((float(until) - time.time() for until in locks.values()), default=0.0)
    return math.ceil(remaining) if remaining > 0 else 0


def register_failure(request, username) -> None:
    """Count one failed attempt; lock each subject whose count reaches its limit."""
    try:
        _count_failure_in_cache(request, username)
    except Exception as exc:
        logger.warning("log-in failure not counted: %s", exc)


def _count_failure_in_cache(request, username) -> None:
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


def reset(request, username) -> None:
    """Forget the failures of a username at the request's address (after a successful log-in)."""
    if not _username(username):
        return
    try:
        kind, value, _ = _subjects(request, username)[0]
        cache.delete(_key(kind, value, "failures"))
    except Exception as exc:
        logger.warning("log-in failures not reset: %s", exc)


def unlock(username: str) -> None:
    """Lift a username's locks and forget its failures, from every address.

    The address counters are not touched: they belong to whoever guesses from an address.
    Unlike the other functions here, this one lets a cache error through: the operator who
    asked for it must hear that it did not happen.
    """
    name = _username(username)
    if not name:
        raise ValueError(f"a username is required. Received: username={username!r}")
    # Per-address counters of the old epoch expire by themselves. The new epoch never does:
    # were it to, the counters and locks made under it would be forgotten with it, early.
    cache.set(_epoch_key(name), uuid.uuid4().hex, timeout=None)
    cache.delete_many([_key("user", name, "failures"), _key("user", name, "until")])


def locked_message(seconds: int) -> str:
    return LOCKED_MESSAGE % {"minutes": max(1, math.ceil(seconds / 60))}


@receiver(user_login_failed, dispatch_uid="medplatform.auth.count_failure")
def _count_failure(sender, credentials, request=None, **kwargs):
    username = credentials.get("username")
    if not locked_for(request, username):  # attempts while locked neither count nor extend it
        register_failure(request, username)


@receiver(user_logged_in, dispatch_uid="medplatform.auth.reset_on_login")
def _reset_on_login(sender, request, user, **kwargs):
    reset(request, user.get_username())


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


# --- API tokens --------------------------------------------------------------------------------


def token_revoke(*, user) -> bool:
    """Delete the user's API token, if they have one (``True`` then).

    Deleted one by one through the ORM, so that ``medplatform.authentication`` forgets the cached
    token at once: the next request that presents it is refused (401).
    """
    revoked = False
    for token in Token.objects.filter(user_id=user.pk):
        token.delete()
        revoked = True
    return revoked


def token_rotate(*, user) -> Token:
    """Replace the user's API token (or create their first) and return the new one; the old
    key is refused from the next request on."""
    with transaction.atomic():
        # Two rotations at once would both create a token for the user: one waits for the other.
        get_user_model().objects.select_for_update().filter(pk=user.pk).exists()
        token_revoke(user=user)
        return Token.objects.create(user=user)


def _revoke_token_on_password_change(sender, instance, created, **kwargs):
    # ``set_password`` leaves the raw password on the instance until the save that stores it
    # (Django uses the same mark to tell password validators); a rehash on log-in clears it first,
    # so upgrading the hasher is not taken for a change.
    if not created and getattr(instance, "_password", None) is not None:
        token_revoke(user=instance)


post_save.connect(_revoke_token_on_password_change, sender=settings.AUTH_USER_MODEL,
                  dispatch_uid="medplatform.auth.revoke_token_on_password_change")


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


TOKEN_RESPONSE = inline_serializer("AuthToken", {"token": serializers.CharField()})


class ObtainAuthTokenView(ObtainAuthToken):
    """``POST username, password`` → ``{"token": ...}``; 429 while log-in is locked.
    ``DELETE`` (authenticated) revokes the caller's token."""

    throttle_classes = api_settings.DEFAULT_THROTTLE_CLASSES

    def get_permissions(self):
        # Anyone may ask for a token with a password; only its owner may revoke it.
        if self.request is not None and self.request.method == "DELETE":
            return [IsAuthenticated()]
        return super().get_permissions()

    def _locked(self, seconds: int) -> Response:
        return Response({"detail": locked_message(seconds)}, status=status.HTTP_429_TOO_MANY_REQUESTS,
                        headers={"Retry-After": str(seconds)})

    @extend_schema(
        description="The user's API token for a username and password (the same token until it is "
                    "rotated or revoked); 429 with Retry-After while log-in is locked.",
        request=AuthTokenSerializer,
        responses={
            200: OpenApiResponse(TOKEN_RESPONSE, description="The user's token"),
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
        reset(request, user.get_username())
        token, _ = Token.objects.get_or_create(user=user)
        return Response({"token": token.key})

    @extend_schema(
        description="Revoke the caller's API token: requests with it are refused (401) from the "
                    "next one on. A password log-in at POST gives a new token.",
        request=None,
        responses={
            204: OpenApiResponse(description="The caller's token is revoked (or they had none); "
                                             "requests with it are refused from now on"),
            401: OpenApiResponse(description="Not authenticated"),
        },
    )
    def delete(self, request, *args, **kwargs):
        token_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class RotateAuthTokenView(APIView):
    """``POST`` (authenticated) → ``{"token": ...}``: a new token; the old one is refused at once."""

    @extend_schema(
        description="Replace the caller's API token with a new one; the old one is refused (401) "
                    "from the next request on.",
        request=None,
        responses={
            200: OpenApiResponse(TOKEN_RESPONSE, description="The caller's new token"),
            401: OpenApiResponse(description="Not authenticated"),
        },
    )
    def post(self, request, *args, **kwargs):
        return Response({"token": token_rotate(user=request.user).key})

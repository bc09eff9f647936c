"""API token authentication that reads each token's user from the shared cache.

The same rule as Django REST framework's ``TokenAuthentication`` (``Authorization: Token <key>``;
an unknown key or an inactive user gets 401), with the token's user kept in a
:class:`~medplatform.rowcache.RowCache` keyed by a hash of the token. The cache holds neither the
token nor the password hash: the user is loaded without its password (reading it, which no API
request does, would query the database). Deleting a token (logging out, rotating it) or saving
or deleting its user (deactivating them, changing staff status) drops the entry at once, in
every web process that shares the cache. Unknown keys are not cached: every guess reaches the
database, behind the rate limits.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth import get_user_model
from django.db.models.signals import post_delete, post_save
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from medplatform.rowcache import RowCache


def _token_digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _load_user(key: str):
    return get_user_model().objects.defer("password").filter(auth_token__key=key).first()


# Entries are keyed by the token's digest and hold its user; the loader gets the token itself.
tokens = RowCache("api-token-user", [get_user_model()], _load_user)


class CachedTokenAuthentication(authentication.TokenAuthentication):
    """``TokenAuthentication`` with the token's user read through :data:`tokens`."""

    def authenticate_credentials(self, key):
        user = tokens.get(_token_digest(key), key)
        if user is None:
            raise exceptions.AuthenticationFailed("Invalid token.")
        if not user.is_active:
            raise exceptions.AuthenticationFailed("User inactive or deleted.")
        return user, Token(key=key, user=user)  # request.auth, as DRF gives it (unsaved copy)


def _forget_token(sender, instance, **kwargs):
    tokens.forget(_token_digest(instance.key))


def _forget_user_tokens(sender, instance, **kwargs):
    keys = Token.objects.filter(user_id=instance.pk).values_list("key", flat=True)
    tokens.forget(*(_token_digest(key) for key in keys))


def connect_signals() -> None:
    """Called once the apps are ready (``medplatform.apps``)."""
    user_model = get_user_model()
    for name, signal in (("save", post_save), ("delete", post_delete)):
        signal.connect(_forget_token, sender=Token, dispatch_uid=f"api-token-{name}")
        signal.connect(_forget_user_tokens, sender=user_model, dispatch_uid=f"api-token-user-{name}")

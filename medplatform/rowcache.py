"""Rows read on every API request, kept in the shared cache between the changes that affect them.

Authenticating a token and looking up the model to classify with are one database query each,
and on a request that predicts in half a millisecond, building those queries through the ORM
costs more than the prediction. A :class:`RowCache` keeps such rows in the default cache (Redis
when the platform has one, so every web process shares it) under a key that names the models'
current fields, so rows pickled by an older version of the code are never read back.

Freshness comes from invalidation, not from the timeout: the owner of a cache connects
``post_save`` and ``post_delete`` receivers that call :meth:`RowCache.forget`, which deletes
the entry at once and, when the transaction commits, replaces it with a short-lived tombstone.
Rows are stored with ``add``, which fails while a tombstone is there: a request that read the
old row before the commit cannot put it back after it, however the two interleave. The timeout
(``ROW_CACHE_SECONDS``, default 60) only bounds how long a change that bypasses signals
(``QuerySet.update``, raw SQL) can go unseen. A cache that cannot be reached is skipped: the
row comes from the database and the request goes on.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import models, transaction

logger = logging.getLogger(__name__)

_MISSING = object()
# What :meth:`RowCache.forget` leaves for a while instead of the entry (cached rows are never
# strings), so that a row read before the change cannot be stored again after it.
_FORGOTTEN = "row-cache:forgotten"
FORGOTTEN_SECONDS = 10


def _fields_signature(model_classes: Iterable[type[models.Model]]) -> str:
    names = [f"{m._meta.label}:{','.join(sorted(f.attname for f in m._meta.concrete_fields))}"
             for m in model_classes]
    return hashlib.sha256("|".join(names).encode()).hexdigest()[:12]


class RowCache:
    """Cached lookups of one kind of row by a key (a primary key, a hashed token).

    Args:
        name: A short name for the keys (``"serving-model"``).
        models: Every model class whose instances the cached value holds, for the key's
            field signature.
        load: ``load(key)`` reads the value from the database; ``None`` means no row (not cached).
            :meth:`get` may pass other arguments to it instead of the key.
    """

    def __init__(self, name: str, models: Iterable[type[models.Model]], load: Callable[[Any], Any]):
        self.name = name
        self._models = tuple(models)
        self._load = load
        self._prefix: str | None = None

    @property
    def timeout(self) -> float:
        return float(getattr(settings, "ROW_CACHE_SECONDS", 60))

    def key(self, key) -> str:
        if self._prefix is None:  # the apps' models are ready by the first lookup
            self._prefix = f"row:{self.name}:{_fields_signature(self._models)}"
        return f"{self._prefix}:{key}"

    def get(self, key, *load_args):
        """The value for ``key``: from the cache, else loaded and cached; ``None`` if no row.

        ``load_args``, when given, are what the loader is called with instead of ``key``.
        """
        load_args = load_args or (key,)
        if self.timeout <= 0:
            return self._load(*load_args)
        cache_key = self.key(key)
        try:
            value = cache.get(cache_key, _MISSING)
        except Exception as exc:  # an unreachable cache must not fail the request
            logger.warning("row cache %s unavailable: %s", self.name, exc)
            return self._load(*load_args)
        forgotten = isinstance(value, str) and value == _FORGOTTEN
        if value is not _MISSING and not forgotten:
            return value
        loaded = self._load(*load_args)
        if loaded is not None and not forgotten:
            try:  # add, not set: a tombstone written since the read above wins
                cache.add(cache_key, loaded, timeout=self.timeout)
            except Exception as exc:
                logger.warning("row cache %s unavailable: %s", self.name, exc)
        return loaded

    def forget(self, *keys) -> None:
        """Drop ``keys`` now, and once the current transaction commits, drop them again leaving
        tombstones for :data:`FORGOTTEN_SECONDS` (the rows are read from the database
        meanwhile)."""
        cache_keys = [self.key(key) for key in keys]
        if not cache_keys:
            return

        def drop(*, tombstone: bool) -> None:
            try:
                if tombstone:
                    cache.set_many(dict.fromkeys(cache_keys, _FORGOTTEN), timeout=FORGOTTEN_SECONDS)
                else:
                    cache.delete_many(cache_keys)
            except Exception as exc:
                logger.warning("row cache %s: could not drop %d entries: %s", self.name,
                               len(cache_keys), exc)

        drop(tombstone=False)
        transaction.on_commit(lambda: drop(tombstone=True))

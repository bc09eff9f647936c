"""Live progress of batch inference jobs: reading the input (a zip's images decoded one by one,
an .npz's images decompressed), then classifying, in the API the job page polls and in the page
itself (a real browser watching the bar move: tests/browser/test_batch_progress.py)."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from rest_framework.test import APIClient

from classifier import services
from medml import batch as medml_batch
from medml import infer
from medml.architectures import build_model
from tests.factories import npz_bytes, zip_bytes
from training import inference
from training.models import InferenceJob

Status = InferenceJob.Status
JOBS = "/api/v1/inference-jobs/"
ZIP_IMAGES = 130  # read_zip reports every 64 images: after 64, 128 and 130
NPZ_IMAGES = 600  # 1.4 MB of pixels: numpy decompresses them 256 KiB at a time
PREDICT_BATCH = 40

@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A compact CNN (untrained: the predictions' values do not matter here), saved as .keras."""
    keras.utils.set_random_seed(0)
    network = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=3, width=8)
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    network.save(path)
    return path


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    infer.clear_predictor_cache()
    yield
    infer.clear_predictor_cache()


@pytest.fixture
def model(model_file, dataset, owner):
    return services.model_version_register(
        name="tiny-cnn", architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=model_file, config={"width": 8})


@pytest.fixture
def api(owner) -> APIClient:
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def every_report(monkeypatch):
    """Every progress report written at once (not at most once a second), and small predict
    batches, so that a test-sized input shows each step."""
    monkeypatch.setattr(inference, "PROGRESS_SECONDS", 0.0)
    monkeypatch.setattr(inference, "BATCH_SIZE", PREDICT_BATCH)


def random_images(count: int) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (count, 28, 28, 3), dtype=np.uint8)


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(name: str, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


class Watcher:
    """Reads the job through the API (what the page polls) at the moments the worker reports:
    while it reads the input, when it loads the model, and before each batch it classifies."""

    FIELDS = ("status", "phase", "read", "done", "total", "progress")

    def __init__(self, api: APIClient, monkeypatch, job_id: int):
        self.api, self.job_id = api, job_id
        self.reading: list[dict] = []
        self.predicting: list[dict] = []
        for reader in ("read_zip", "read_npz"):
            monkeypatch.setattr(inference.medml_batch, reader,
                                self._watch_reading(getattr(medml_batch, reader)))
        loading = inference.services_predict.predictor_for

        def predictor_for(*args, **kwargs):
            self.predicting.append(self.state())
            return _WatchedPredictor(loading(*args, **kwargs), self)

        monkeypatch.setattr(inference.services_predict, "predictor_for", predictor_for)

    def state(self) -> dict:
        job = self.api.get(f"{JOBS}{self.job_id}/").json()
        return {key: job[key] for key in self.FIELDS}

    def _watch_reading(self, read):
        def watched(*args, progress=None, **kwargs):
            if progress is None:  # checking the upload when the job is created
                return read(*args, **kwargs)

            def report(count: int, total: int) -> None:
                progress(count, total)  # the worker's own report first, then a look at the job
                self.reading.append(self.state())

            return read(*args, progress=report, **kwargs)

        return watched


class _WatchedPredictor:
    def __init__(self, predictor, watcher: Watcher):
        self._predictor, self._watcher = predictor, watcher

    def predict(self, images):
        self._watcher.predicting.append(self._watcher.state())
        return self._predictor.predict(images)


def assert_progress_moves_through_both_phases(watcher: Watcher, total: int, reads: list[int]):
    # Reading: the count of images read grows, and fills the first half of the bar.
    assert [state["read"] for state in watcher.reading] == reads
    for state in watcher.reading:
        assert (state["status"], state["phase"], state["done"], state["total"]) == (
            "running", "reading", 0, total)
        assert state["progress"] == pytest.approx(state["read"] / (2 * total))
    assert 0 < watcher.reading[0]["progress"] < 0.5
    # Classifying: every image read, the count classified grows through the second half.
    loading, *batches = watcher.predicting
    assert loading == {"status": "running", "phase": "predicting", "read": total, "done": 0,
                       "total": total, "progress": 0.5}
    assert [state["done"] for state in batches] == list(range(0, total, PREDICT_BATCH))
    for state in batches:
        assert (state["phase"], state["read"]) == ("predicting", total)
        assert state["progress"] == pytest.approx(0.5 + state["done"] / (2 * total))
    # Never backwards, from the first report to the end.
    progress = [state["progress"] for state in watcher.reading + watcher.predicting]
    assert progress == sorted(progress)
    final = watcher.state()
    assert final == {"status": "succeeded", "phase": "", "read": total, "done": total,
                     "total": total, "progress": 1.0}


def test_a_zip_job_shows_the_images_read_then_the_images_classified(
        api, owner, model, monkeypatch, every_report, django_capture_on_commit_callbacks):
    images = random_images(ZIP_IMAGES)
    archive = zip_bytes({f"scan-{i:03d}.png": png(image) for i, image in enumerate(images)})
    with django_capture_on_commit_callbacks(execute=False):  # queued: no worker yet
        job = inference.inference_job_create(owner=owner, model_version=model,
                                             upload=upload("ward.zip", archive))
    watcher = Watcher(api, monkeypatch, job.pk)
    assert watcher.state() == {"status": "queued", "phase": "", "read": 0, "done": 0,
                               "total": ZIP_IMAGES, "progress": 0.0}

    assert inference.inference_job_run(job_id=job.pk) == "succeeded"

    assert_progress_moves_through_both_phases(watcher, ZIP_IMAGES, reads=[64, 128, 130])


def test_an_npz_job_shows_the_images_read_as_they_are_decompressed(
        api, owner, model, monkeypatch, every_report, django_capture_on_commit_callbacks):
    data = npz_bytes({"images": random_images(NPZ_IMAGES)})
    with django_capture_on_commit_callbacks(execute=False):
        job = inference.inference_job_create(owner=owner, model_version=model,
                                             upload=upload("ward.npz", data))
    watcher = Watcher(api, monkeypatch, job.pk)

    assert inference.inference_job_run(job_id=job.pk) == "succeeded"

    reads = [state["read"] for state in watcher.reading]
    assert len(reads) >= 4 and reads[-1] == NPZ_IMAGES  # several steps, not one jump
    assert_progress_moves_through_both_phases(watcher, NPZ_IMAGES, reads=reads)


def test_a_split_job_is_half_done_once_its_images_are_loaded(
        api, owner, model, dataset, monkeypatch, every_report, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                             split="test")
    watcher = Watcher(api, monkeypatch, job.pk)

    assert inference.inference_job_run(job_id=job.pk) == "succeeded"

    assert watcher.reading == []  # the split's arrays are loaded at once
    assert watcher.predicting[0] == {"status": "running", "phase": "predicting", "read": 12,
                                     "done": 0, "total": 12, "progress": 0.5}
    assert watcher.state()["progress"] == 1.0


def test_the_job_page_renders_the_phase_and_the_progress_it_has_reached(
        client, owner, model, django_capture_on_commit_callbacks):
    client.force_login(owner)
    with django_capture_on_commit_callbacks(execute=False):
        job = inference.inference_job_create(owner=owner, model_version=model,
                                             dataset=model.dataset, split="test")
    page = client.get(f"/inference/{job.pk}/").content.decode()
    assert '<p id="inf-phase" class="muted">Waiting for a worker</p>' in page

    InferenceJob.objects.filter(pk=job.pk).update(status=Status.RUNNING, phase="reading", read=6)
    page = client.get(f"/inference/{job.pk}/").content.decode()
    assert '<p id="inf-phase" class="muted">Reading images: 6 of 12</p>' in page
    assert '<div class="bar" style="width: 25%"></div><span class="label">25%</span>' in page
    listing = client.get("/inference/").content.decode()
    assert "0/12 <span class=\"muted\">(reading images, 25%)</span>" in listing

    InferenceJob.objects.filter(pk=job.pk).update(phase="predicting", read=12, done=9)
    page = client.get(f"/inference/{job.pk}/").content.decode()
    assert '<p id="inf-phase" class="muted">Classifying: 9 of 12</p>' in page
    assert 'aria-valuenow="88"' in page

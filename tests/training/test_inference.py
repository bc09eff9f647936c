"""Batch inference jobs: the service, the REST API (/api/v1/inference-jobs/) and the pages."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from pathlib import Path

import keras
import numpy as np
import pytest
from django.utils import timezone
from PIL import Image
from pytest_django.asserts import assertContains, assertRedirects
from rest_framework.test import APIClient

from classifier import services
from classifier.models import ModelVersion
from medml import infer
from medml.architectures import build_model
from medplatform.celery import waiting_task_args
from tests.factories import (
    DatasetFactory,
    ModelVersionFactory,
    UserFactory,
    medmnist_arrays,
    npz_bytes,
    save_tiny_trained_model,
    zip_bytes,
)
from tests.training.conftest import TINY_COUNTS, send_tasks_to_the_broker
from training import inference
from training.models import InferenceJob

Status = InferenceJob.Status
JOBS = "/api/v1/inference-jobs/"
CLASS_NAMES = ["adenoma", "carcinoma", "normal"]
BINARY_COUNTS = {"train": [6, 6], "val": [3, 3], "test": [10, 10]}


# --- a tiny real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_arrays() -> dict[str, np.ndarray]:
    """The arrays the ``dataset`` fixture imports (same counts, size, channels and seed)."""
    return medmnist_arrays(TINY_COUNTS)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, dataset_arrays) -> Path:
    """A compact CNN trained for one epoch on the tiny dataset, saved as .keras."""
    return save_tiny_trained_model(dataset_arrays, tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture(scope="module")
def reference_probabilities(model_file, dataset_arrays) -> np.ndarray:
    """The saved model's test-split probabilities, computed without the platform's code."""
    model = keras.models.load_model(model_file, compile=False)
    return np.asarray(model.predict(dataset_arrays["test_images"], verbose=0))


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    infer.clear_predictor_cache()
    yield
    infer.clear_predictor_cache()


def register(model_file: Path, dataset, owner, name: str = "tiny-cnn") -> ModelVersion:
    return services.model_version_register(
        name=name, architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=model_file, config={"width": 8},
    )


@pytest.fixture
def model(model_file, dataset, owner) -> ModelVersion:
    return register(model_file, dataset, owner)


@pytest.fixture
def other_user(db):
    return UserFactory(username="piet")


@pytest.fixture
def api(owner) -> APIClient:
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def browser_client(client, owner):
    client.force_login(owner)
    return client


# --- helpers -------------------------------------------------------------------------------------


def upload(name: str, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def launch(api, capture, **fields):
    """POST a job; the task runs inline when the request's transaction commits."""
    with capture(execute=True):
        return api.post(JOBS, fields, format="multipart")


def csv_rows(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode())))


def download(api, job_id: int, kind: str = "csv"):
    response = api.get(f"{JOBS}{job_id}/results/{kind}/")
    body = b"".join(response.streaming_content) if response.status_code == 200 else b""
    return response, body


def stored_files(media_root) -> set[str]:
    root = Path(media_root)
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def accuracy_from_csv(rows: list[list[str]]) -> float:
    header, body = rows[0], rows[1:]
    predicted, true = header.index("predicted_label"), header.index("true_label")
    return float(np.mean([row[predicted] == row[true] for row in body]))


# --- the service ---------------------------------------------------------------------------------


def test_a_job_on_the_test_split_succeeds_with_a_prediction_per_image_and_a_report(
        owner, model, dataset, dataset_arrays, reference_probabilities,
        django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                             split="test")
    job.refresh_from_db()

    assert job.status == Status.SUCCEEDED, job.error
    assert job.total == job.done == 12
    assert job.progress == 1.0
    assert job.started_at and job.finished_at and job.seconds > 0
    predicted = reference_probabilities.argmax(axis=1)
    assert job.summary == {name: int((predicted == i).sum()) for i, name in enumerate(CLASS_NAMES)}
    assert sum(job.summary.values()) == job.total

    labels = dataset_arrays["test_labels"].ravel()
    assert job.report["n"] == 12
    assert job.report["accuracy"] == pytest.approx(float(np.mean(predicted == labels)))
    assert job.report["confusion_matrix"] is not None

    rows = csv_rows(job.results_csv.read())
    assert rows[0] == ["name", "predicted_index", "predicted_label", "true_label",
                       "p[adenoma]", "p[carcinoma]", "p[normal]"]
    assert [row[0] for row in rows[1:]] == [f"test[{i}]" for i in range(12)]
    assert [int(row[1]) for row in rows[1:]] == predicted.tolist()
    assert [row[3] for row in rows[1:]] == [CLASS_NAMES[label] for label in labels]
    np.testing.assert_allclose(np.array([row[4:] for row in rows[1:]], dtype=float),
                               reference_probabilities, atol=2e-6)
    assert accuracy_from_csv(rows) == pytest.approx(job.report["accuracy"])

    results = json.loads(job.results_json.read())
    assert len(results) == 12
    assert results[0]["true_label"] == CLASS_NAMES[labels[0]]
    # Answers below the confidence floor say so, as single predictions do.
    top = reference_probabilities.max(axis=1)
    assert [bool(row.get("warnings")) for row in results] == (top < 0.6).tolist()
    for row, p in zip(results, top, strict=True):
        if p < 0.6:
            assert row["warnings"] == [f"low confidence: {row['predicted_label']} has a "
                                       f"probability of {p:.2f}, below 0.60"]


def test_running_a_finished_job_again_changes_nothing(owner, model, dataset,
                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                             split="val")
    job.refresh_from_db()
    finished = (job.status, job.finished_at, job.results_csv.name, job.summary)

    assert inference.inference_job_run(job_id=job.pk).startswith("skipped")
    job.refresh_from_db()
    assert (job.status, job.finished_at, job.results_csv.name, job.summary) == finished


def test_the_sweep_requeues_a_job_whose_worker_stopped_and_it_then_finishes(owner, model, dataset):
    job = InferenceJob.objects.create(
        owner=owner, model_version=model, source=InferenceJob.Source.DATASET, dataset=dataset,
        split="test", total=12, status=Status.RUNNING, done=3, claim_token="dead-worker",
        heartbeat_at=timezone.now() - timedelta(hours=1), started_at=timezone.now())
    fresh = InferenceJob.objects.create(
        owner=owner, model_version=model, source=InferenceJob.Source.DATASET, dataset=dataset,
        split="test", total=12, status=Status.RUNNING, claim_token="live-worker",
        heartbeat_at=timezone.now(), started_at=timezone.now())

    assert inference.inference_jobs_sweep() == 1  # tasks are eager: it ran just now

    job.refresh_from_db()
    fresh.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.done == 12
    assert fresh.status == Status.RUNNING
    assert fresh.claim_token == "live-worker"


def test_a_job_whose_worker_died_is_sent_again_once_while_no_worker_takes_it(
        owner, model, dataset, monkeypatch):
    send_tasks_to_the_broker(monkeypatch)  # no worker: the message waits in the broker
    job = InferenceJob.objects.create(
        owner=owner, model_version=model, source=InferenceJob.Source.DATASET, dataset=dataset,
        split="test", total=12, status=Status.RUNNING, claim_token="dead-worker",
        heartbeat_at=timezone.now() - timedelta(hours=1), started_at=timezone.now())

    assert inference.inference_jobs_sweep() == 1
    # Sweeps until a worker comes back send nothing more: the message is still waiting.
    assert inference.inference_jobs_sweep() == 0
    assert inference.inference_jobs_sweep() == 0
    assert waiting_task_args("training.tasks.run_inference_job") == [(job.pk,)]


def test_a_model_that_cannot_be_loaded_fails_the_job_with_the_reason(
        owner, dataset, django_capture_on_commit_callbacks):
    missing = ModelVersionFactory(dataset=dataset, owner=owner, name="lost-artifact")
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=missing, dataset=dataset,
                                             split="test")
    job.refresh_from_db()

    assert job.status == Status.FAILED
    assert job.error
    assert not job.results_csv
    assert job.finished_at is not None


def test_a_job_stopped_at_the_time_limit_fails_saying_so(
        owner, model, dataset, monkeypatch, settings, django_capture_on_commit_callbacks):
    from celery.exceptions import SoftTimeLimitExceeded

    def past_the_limit(*args, **kwargs):
        raise SoftTimeLimitExceeded()  # what Celery raises in the task at its soft time limit

    monkeypatch.setattr(inference.services_predict, "predictor_for", past_the_limit)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 600
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                             split="test")
    job.refresh_from_db()
    assert job.status == Status.FAILED and job.finished_at is not None
    assert job.error.startswith("stopped at the time limit of 600 s")


def test_a_binary_models_report_includes_the_metrics_at_its_decision_threshold(
        owner, tmp_path, django_capture_on_commit_callbacks):
    binary = DatasetFactory(owner=owner, name="Tiny breast", class_counts=BINARY_COUNTS,
                            class_names=["normal", "malignant"])
    keras.utils.set_random_seed(1)
    network = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=2, width=8)
    path = tmp_path / "binary.keras"
    network.save(path)
    arrays = medmnist_arrays(BINARY_COUNTS)
    test_images, labels = arrays["test_images"], arrays["test_labels"].ravel()
    p1 = np.asarray(network.predict(test_images, verbose=0))[:, 1]
    threshold = float(np.median(p1))
    # The threshold must decide differently from "most probable class" for the test to mean much.
    assert not np.array_equal(p1 >= threshold, p1 >= 0.5)
    model = register(path, binary, owner, name="tiny-binary")
    ModelVersion.objects.filter(pk=model.pk).update(decision_threshold=threshold)
    model.refresh_from_db()

    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=binary,
                                             split="test")
    job.refresh_from_db()

    assert job.status == Status.SUCCEEDED, job.error
    rows = csv_rows(job.results_csv.read())
    assert [int(row[1]) for row in rows[1:]] == (p1 >= threshold).astype(int).tolist()
    # As for test-set evaluations: the body at the most probable class, comparable between
    # models, and the served rule (the rule of the CSV) under "at_threshold".
    served = job.report["at_threshold"]
    assert served["threshold"] == pytest.approx(threshold)
    assert served["accuracy"] == pytest.approx(accuracy_from_csv(rows))
    assert job.report["accuracy"] == pytest.approx(float(np.mean(p1.round() == labels)))


# --- the API: creating jobs ----------------------------------------------------------------------


def test_a_split_job_is_created_through_the_api_and_its_csv_downloaded(
        api, model, django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk, split="test")
    assert response.status_code == 201, response.json()
    created = response.json()
    assert created["status"] == "queued"
    assert (created["source"], created["split"], created["total"]) == ("dataset", "test", 12)
    assert created["results_csv_url"] is None

    detail = api.get(f"{JOBS}{created['id']}/").json()
    assert detail["status"] == "succeeded", detail["error"]
    assert (detail["done"], detail["progress"]) == (12, 1.0)
    assert detail["input"] == "Tiny blood / test"
    assert detail["results_csv_url"] == f"{JOBS}{created['id']}/results/csv/"
    assert 0.0 <= detail["report"]["accuracy"] <= 1.0

    response, body = download(api, created["id"])
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv"
    assert response["Content-Disposition"] == (
        f'attachment; filename="inference-job-{created["id"]}.csv"')
    rows = csv_rows(body)
    assert rows[0][:4] == ["name", "predicted_index", "predicted_label", "true_label"]
    assert len(rows) == 1 + 12

    response, body = download(api, created["id"], "json")
    assert response["Content-Type"] == "application/json"
    assert len(json.loads(body)) == 12


def test_an_uploaded_zip_of_pngs_without_folders_gives_results_but_no_report(
        api, model, dataset_arrays, reference_probabilities, media_root,
        django_capture_on_commit_callbacks):
    images = dataset_arrays["test_images"][:5]
    archive = zip_bytes({f"scan-{i}.png": png(image) for i, image in enumerate(images)})
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("clinic.zip", archive))
    assert response.status_code == 201, response.json()
    assert (response.json()["source"], response.json()["input"]) == ("upload", "clinic.zip")

    job = InferenceJob.objects.get()
    assert job.status == Status.SUCCEEDED, job.error
    assert (job.total, job.done) == (5, 5)
    assert job.report == {}
    assert sum(job.summary.values()) == 5
    assert any(name.startswith("inference/inputs/") for name in stored_files(media_root))

    _, body = download(api, job.pk)
    rows = csv_rows(body)
    assert rows[0] == ["name", "predicted_index", "predicted_label",
                       "p[adenoma]", "p[carcinoma]", "p[normal]"]
    assert [row[0] for row in rows[1:]] == [f"scan-{i}.png" for i in range(5)]
    # The same pixels as the dataset's first test images, so the same probabilities.
    np.testing.assert_allclose(np.array([row[3:] for row in rows[1:]], dtype=float),
                               reference_probabilities[:5], atol=2e-6)
    assert api.get(f"{JOBS}{job.pk}/").json()["report"] == {}


def test_a_zip_of_class_folders_is_labelled_and_gets_a_report(
        api, model, dataset_arrays, django_capture_on_commit_callbacks):
    images, labels = dataset_arrays["test_images"], dataset_arrays["test_labels"].ravel()
    archive = zip_bytes({f"{CLASS_NAMES[label]}/{i:02d}.png": png(image)
                         for i, (image, label) in enumerate(zip(images, labels, strict=True))})
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("labelled.zip", archive))
    assert response.status_code == 201, response.json()

    job = InferenceJob.objects.get()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.report["n"] == 12
    _, body = download(api, job.pk)
    rows = csv_rows(body)
    assert sorted(row[3] for row in rows[1:]) == sorted(CLASS_NAMES[label] for label in labels)
    assert job.report["accuracy"] == pytest.approx(accuracy_from_csv(rows))


def test_an_uploaded_npz_of_images_and_labels_gets_a_report(
        api, model, dataset_arrays, django_capture_on_commit_callbacks):
    data = npz_bytes({"images": dataset_arrays["val_images"],
                      "labels": dataset_arrays["val_labels"]})
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("val.npz", data))
    assert response.status_code == 201, response.json()

    job = InferenceJob.objects.get()
    assert job.status == Status.SUCCEEDED, job.error
    assert (job.total, job.report["n"]) == (12, 12)


@pytest.mark.parametrize("name, data, reason", [
    ("scans.zip", zip_bytes({"a.png": b"not pixels"}), "clinic.zip: 'a.png': not a PNG"),
    ("scans.zip", zip_bytes({"../a.png": b"x"}), "escapes the archive"),
    ("scans.zip", b"not a zip at all", "not a valid .zip file"),
    ("scans.npz", npz_bytes({"images": np.zeros((2, 32, 32, 3), np.uint8)}), "shape (2, 32, 32, 3)"),
    ("scans.npz", npz_bytes({"images": np.zeros((2, 28, 28, 3), np.uint8),
                             "labels": np.array([0, 7])}), "labels must lie in 0..2"),
    ("scans.csv", b"a,b\n1,2\n", "upload an .npz or a .zip"),
])
def test_a_bad_upload_is_refused_with_the_reason_and_nothing_is_stored(
        api, model, media_root, django_capture_on_commit_callbacks, name, data, reason):
    before = stored_files(media_root)
    filename = "clinic" + Path(name).suffix
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload(filename, data))

    assert response.status_code == 400
    [message] = response.json()["file"]
    assert message.startswith(f"{filename}: ")
    assert reason.replace("clinic.zip: ", "") in message
    assert not InferenceJob.objects.exists()
    assert stored_files(media_root) == before


def test_a_zip_with_a_damaged_member_is_refused_with_the_reason_and_nothing_is_stored(
        api, model, dataset_arrays, media_root, django_capture_on_commit_callbacks):
    image = png(dataset_arrays["test_images"][0])
    data = bytearray(zip_bytes({"a.png": image, "b.png": image + b"\0" * 4096}))
    start = data.index(b"b.png") + len("b.png")  # its compressed data follows its local header
    data[start + 8:start + 40] = b"\xff" * 32
    before = stored_files(media_root)

    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("clinic.zip", bytes(data)))

    assert response.status_code == 400
    [message] = response.json()["file"]
    assert message.startswith("clinic.zip: 'b.png' is corrupt: ")
    assert not InferenceJob.objects.exists()
    assert stored_files(media_root) == before


def test_an_empty_upload_is_refused(api, model, django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("clinic.zip", b""))
    assert response.status_code == 400
    assert "empty" in response.json()["file"][0]
    assert not InferenceJob.objects.exists()


def test_another_users_model_is_refused(api, model_file, other_user,
                                        django_capture_on_commit_callbacks):
    theirs = register(model_file, DatasetFactory(owner=other_user), other_user, name="theirs")
    response = launch(api, django_capture_on_commit_callbacks, model=theirs.pk, split="test")
    assert response.status_code == 400
    assert response.json()["model"] == [f"no model {theirs.pk} that you can use"]
    assert not InferenceJob.objects.exists()


@pytest.mark.parametrize("with_split, with_file", [(True, True), (False, False)])
def test_a_job_needs_either_a_split_or_a_file_not_both_nor_neither(
        api, model, dataset_arrays, django_capture_on_commit_callbacks, with_split, with_file):
    fields = {"model": model.pk}
    if with_split:
        fields["split"] = "test"
    if with_file:
        fields["file"] = upload("one.zip", zip_bytes({"a.png": png(dataset_arrays["test_images"][0])}))
    response = launch(api, django_capture_on_commit_callbacks, **fields)
    assert response.status_code == 400
    assert response.json()["non_field_errors"] == ["give either a split or a file"]
    assert not InferenceJob.objects.exists()


def test_an_unknown_split_is_refused(api, model, django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, model=model.pk, split="holdout")
    assert response.status_code == 400
    assert "split" in response.json()
    assert not InferenceJob.objects.exists()


def test_anonymous_requests_are_refused_with_401(db):
    assert APIClient().get(JOBS).status_code == 401
    assert APIClient().post(JOBS, {}).status_code == 401


# --- the API: reading jobs -----------------------------------------------------------------------


def test_a_finished_job_is_deleted_with_its_input_and_results(
        api, model, other_user, dataset_arrays, media_root, browser_client,
        django_capture_on_commit_callbacks):
    archive = zip_bytes({f"scan-{i}.png": png(image)
                         for i, image in enumerate(dataset_arrays["test_images"][:3])})
    first = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                   file=upload("clinic.zip", archive)).json()["id"]
    second = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                    split="test").json()["id"]
    assert len([n for n in stored_files(media_root) if n.startswith("inference/")]) == 5

    stranger = APIClient()
    stranger.force_authenticate(other_user)
    assert stranger.delete(f"{JOBS}{first}/").status_code == 404

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{JOBS}{first}/").status_code == 204
    kept = InferenceJob.objects.get(pk=second)
    assert sorted(n for n in stored_files(media_root) if n.startswith("inference/")) == [
        kept.results_csv.name, kept.results_json.name]
    assert kept.results_csv.name.startswith(f"inference/results/job-{second}-")

    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post(f"/inference/{second}/delete/")
    assert response.status_code == 302 and response["Location"] == "/inference/"
    assert not InferenceJob.objects.exists()
    assert not [n for n in stored_files(media_root) if n.startswith("inference/")]


def test_a_queued_job_is_deleted_with_its_input_and_its_message_then_does_nothing(
        api, model, dataset_arrays, media_root, django_capture_on_commit_callbacks):
    # No worker listens to the inference queue: without this the job would wait for ever.
    archive = zip_bytes({"scan.png": png(dataset_arrays["test_images"][0])})
    with django_capture_on_commit_callbacks(execute=False):
        job_id = api.post(JOBS, {"model": model.pk, "file": upload("clinic.zip", archive)},
                          format="multipart").json()["id"]
    assert InferenceJob.objects.get(pk=job_id).status == Status.QUEUED
    assert [n for n in stored_files(media_root) if n.startswith("inference/inputs/")]

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{JOBS}{job_id}/").status_code == 204

    assert not InferenceJob.objects.exists()
    assert inference.inference_job_run(job_id=job_id).startswith("skipped")
    assert not [n for n in stored_files(media_root) if n.startswith("inference/")]


def test_a_running_job_deleted_from_its_page_stops_and_leaves_no_files(
        owner, model, dataset_arrays, media_root, browser_client, monkeypatch,
        django_capture_on_commit_callbacks):
    archive = zip_bytes({f"scan-{i}.png": png(image)
                         for i, image in enumerate(dataset_arrays["test_images"][:3])})
    with django_capture_on_commit_callbacks(execute=False):
        job = inference.inference_job_create(owner=owner, model_version=model,
                                             upload=upload("clinic.zip", archive))
    page = browser_client.get(f"/inference/{job.pk}/")
    assertContains(page, "Stop and delete")
    loading = inference.services_predict.predictor_for

    def deleted_while_the_model_loads(*args, **kwargs):
        assert InferenceJob.objects.get(pk=job.pk).status == Status.RUNNING
        with django_capture_on_commit_callbacks(execute=True):
            response = browser_client.post(f"/inference/{job.pk}/delete/")
        assert response.status_code == 302 and response["Location"] == "/inference/"
        return loading(*args, **kwargs)

    monkeypatch.setattr(inference.services_predict, "predictor_for", deleted_while_the_model_loads)

    assert inference.inference_job_run(job_id=job.pk) == "lost the job"
    assert not InferenceJob.objects.exists()
    assert not [n for n in stored_files(media_root) if n.startswith("inference/")]


def test_other_users_can_neither_see_a_job_nor_download_its_results(
        api, model, other_user, django_capture_on_commit_callbacks):
    job_id = launch(api, django_capture_on_commit_callbacks, model=model.pk, split="test").json()["id"]
    assert download(api, job_id)[0].status_code == 200

    stranger = APIClient()
    stranger.force_authenticate(other_user)
    assert stranger.get(JOBS).json()["results"] == []
    assert stranger.get(f"{JOBS}{job_id}/").status_code == 404
    assert stranger.get(f"{JOBS}{job_id}/results/csv/").status_code == 404
    assert stranger.get(f"{JOBS}{job_id}/results/json/").status_code == 404


def test_the_list_shows_the_users_own_jobs(api, model, django_capture_on_commit_callbacks):
    job_id = launch(api, django_capture_on_commit_callbacks, model=model.pk, split="test").json()["id"]
    jobs = api.get(JOBS).json()["results"]
    assert [job["id"] for job in jobs] == [job_id]
    assert jobs[0]["model_name"] == str(model)


def test_results_are_not_found_before_the_job_has_succeeded(
        api, model, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):  # queued, never run
        job_id = api.post(JOBS, {"model": model.pk, "split": "test"}, format="multipart").json()["id"]
    assert InferenceJob.objects.get(pk=job_id).status == Status.QUEUED

    response, _ = download(api, job_id)
    assert response.status_code == 404
    assert "succeeded" in response.json()["detail"]
    assert api.get(f"{JOBS}{job_id}/").json()["results_json_url"] is None


# --- the pages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/inference/", "/inference/1/"])
def test_anonymous_visitors_are_sent_to_the_login_page(client, db, path):
    response = client.get(path)
    assertRedirects(response, f"/login/?next={path}", fetch_redirect_response=False)


def test_the_batch_page_offers_the_users_models_and_lists_their_jobs(browser_client, model):
    response = browser_client.get("/inference/")
    assert response.status_code == 200
    assertContains(response, f'<option value="{model.pk}">{model}')
    assertContains(response, "No batch jobs yet.")


def test_submitting_a_split_on_the_page_queues_a_job_and_opens_its_page(
        browser_client, model, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post("/inference/", {"model": model.pk, "split": "test"})
    job = InferenceJob.objects.get()
    assertRedirects(response, f"/inference/{job.pk}/")
    assert (job.source, job.split, job.owner) == ("dataset", "test", model.owner)

    page = browser_client.get(f"/inference/{job.pk}/")
    assertContains(page, f"Batch job #{job.pk}")
    assertContains(page, "Succeeded")
    assertContains(page, f'href="/api/v1/inference-jobs/{job.pk}/results/csv/"')
    listing = browser_client.get("/inference/")
    assertContains(listing, f'href="/inference/{job.pk}/"')


def test_a_bad_upload_on_the_page_shows_the_reason_and_creates_nothing(
        browser_client, model, media_root, django_capture_on_commit_callbacks):
    before = stored_files(media_root)
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post("/inference/", {
            "model": model.pk, "file": upload("ward.zip", zip_bytes({"x/../../a.png": b"x"}))})

    assertContains(response, "ward.zip: member &#x27;x/../../a.png&#x27; escapes the archive",
                   status_code=400)
    assert not InferenceJob.objects.exists()
    assert stored_files(media_root) == before


def test_an_upload_over_the_limit_is_stopped_while_it_streams_in(
        api, model, settings, media_root, spooled_uploads, django_capture_on_commit_callbacks):
    temp_dir, spooled = spooled_uploads
    settings.DATASET_UPLOAD_MAX_BYTES = 256 * 1024
    before = stored_files(media_root)

    response = launch(api, django_capture_on_commit_callbacks, model=model.pk,
                      file=upload("scans.npz", b"\0" * (4 * 1024 * 1024)))

    assert response.status_code == 413
    assert response.json() == {"file": [
        "the file 'scans.npz' is larger than the limit of 262144 bytes; nothing was stored"]}
    assert 0 < sum(spooled) <= settings.DATASET_UPLOAD_MAX_BYTES
    assert list(temp_dir.iterdir()) == []
    assert not InferenceJob.objects.exists()
    assert stored_files(media_root) == before


def test_the_page_stops_an_upload_over_the_limit_and_says_why(
        browser_client, model, settings, media_root, spooled_uploads):
    temp_dir, spooled = spooled_uploads
    settings.DATASET_UPLOAD_MAX_BYTES = 256 * 1024

    response = browser_client.post("/inference/", {
        "model": model.pk, "file": upload("scans.zip", b"\0" * (4 * 1024 * 1024))})

    assertContains(response, "the file &#x27;scans.zip&#x27; is larger than the limit of 262144 "
                   "bytes; nothing was stored", status_code=400)
    assert 0 < sum(spooled) <= settings.DATASET_UPLOAD_MAX_BYTES
    assert list(temp_dir.iterdir()) == []
    assert not InferenceJob.objects.exists()


def test_the_batch_page_still_checks_its_csrf_token(owner, model):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    assert client.get("/inference/").status_code == 200
    response = client.post("/inference/", {"model": model.pk, "split": "test"})
    assert response.status_code == 403
    assert not InferenceJob.objects.exists()


def test_the_page_asks_for_a_split_or_a_file(browser_client, model):
    response = browser_client.post("/inference/", {"model": model.pk})
    assertContains(response, "choose either a split of the model&#x27;s dataset or a file",
                   status_code=400)
    assert not InferenceJob.objects.exists()


def test_another_users_job_page_is_not_found(browser_client, model_file, other_user,
                                             django_capture_on_commit_callbacks):
    theirs = register(model_file, DatasetFactory(owner=other_user), other_user, name="theirs")
    job = InferenceJob.objects.create(owner=other_user, model_version=theirs,
                                      source=InferenceJob.Source.DATASET,
                                      dataset=theirs.dataset, split="test", total=12)
    assert browser_client.get(f"/inference/{job.pk}/").status_code == 404
    listing = browser_client.get("/inference/")
    assertContains(listing, "No batch jobs yet.")


def test_a_model_trained_with_test_time_augmentation_is_run_with_it(
        owner, model_file, dataset, dataset_arrays, django_capture_on_commit_callbacks):
    tta_model = services.model_version_register(
        name="tiny-tta", architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=model_file, config={"width": 8, "tta": True},
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=tta_model,
                                             dataset=dataset, split="test")
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    predictor = infer.Predictor.from_file(model_file, runtime="onnxruntime", threads=1)
    expected = predictor.predict_tta(dataset_arrays["test_images"]).probabilities
    rows = csv_rows(job.results_csv.read())
    np.testing.assert_allclose(np.array([row[4:] for row in rows[1:]], dtype=float), expected,
                               atol=2e-6)
    assert not np.allclose(expected, predictor.predict(dataset_arrays["test_images"]), atol=1e-4)

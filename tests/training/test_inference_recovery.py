"""Batch inference jobs after faults: a job whose worker dies each time is failed after
``JOB_MAX_DELIVERIES`` runs, and result files stored by a run that could not record them (the
database went away) are removed by the next run, or with the job."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import keras
import pytest
from django.conf import settings as django_settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import OperationalError, connection
from django.utils import timezone
from rest_framework.test import APIClient

from classifier import services
from medml import infer
from medml.architectures import build_model
from medplatform.celery import app
from training import inference
from training.models import InferenceJob

Status = InferenceJob.Status
JOBS = "/api/v1/inference-jobs/"
RECORDING_RESULTS = '"results_csv" = '  # set by the update that records a job's results only


class WorkerKilled(BaseException):
    """Stands for the worker process dying (SIGKILL, out of memory): nothing after it runs, no
    ``except Exception`` sees it, and the job row stays as the run left it."""


class Outage:
    """A query wrapper failing the updates that contain ``only`` as a lost connection does:
    ``before`` the database ran them, or ``after`` (the answer is lost, the change is made).
    ``times`` bounds the failures (None: until the wrapper is removed)."""

    def __init__(self, only: str, *, when: str = "before", times: int | None = None):
        self.only, self.when, self.times = only, when, times

    def __call__(self, execute, sql, params, many, context):
        if not sql.startswith("UPDATE") or self.only not in sql or self.times == 0:
            return execute(sql, params, many, context)
        if self.times is not None:
            self.times -= 1
        if self.when == "after":
            execute(sql, params, many, context)
        raise OperationalError("server closed the connection unexpectedly (simulated)")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
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


def queued_job(owner, model, dataset) -> InferenceJob:
    """A job on the test split, queued without a message: each test runs it when it chooses."""
    return InferenceJob.objects.create(owner=owner, model_version=model, dataset=dataset,
                                       source=InferenceJob.Source.DATASET, split="test", total=12)


def age_heartbeat(job: InferenceJob) -> None:
    """As if the job's worker had been silent for longer than the heartbeat timeout."""
    InferenceJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=django_settings.JOB_HEARTBEAT_TIMEOUT + 10))


def result_files(media_root) -> set[str]:
    root = Path(media_root) / "inference" / "results"
    return {f"inference/results/{path.name}" for path in root.glob("*")} if root.exists() else set()


def files_of_the_current_run(job: InferenceJob) -> set[str]:
    """The names the run holding ``job`` stores its results under."""
    job.refresh_from_db()
    return {f"inference/results/job-{job.pk}-{job.claim_token[:8]}.{suffix}"
            for suffix in ("csv", "json")}


def die_when_recording_the_results(monkeypatch) -> None:
    """Each run's worker dies once its results are stored, before the row records them."""
    def killed(*args, **kwargs):
        raise WorkerKilled()

    monkeypatch.setattr(inference.services, "retry_through_outage", killed)


# --- workers that die: JOB_MAX_DELIVERIES --------------------------------------------------------


@pytest.mark.parametrize("found_by", ["sweep", "redelivered message"])
def test_a_job_whose_worker_died_in_each_of_its_runs_is_failed_with_no_files_left(
        owner, model, dataset, api, settings, monkeypatch, media_root, found_by):
    settings.JOB_MAX_DELIVERIES = 3
    job = queued_job(owner, model, dataset)
    die_when_recording_the_results(monkeypatch)
    for run in range(1, 4):
        with pytest.raises(WorkerKilled):
            inference.inference_job_run(job_id=job.pk)
        job.refresh_from_db()
        assert (job.status, job.deliveries) == (Status.RUNNING, run)
        # Each run starts by removing what the run before it stored and never recorded.
        assert result_files(media_root) == files_of_the_current_run(job)
        age_heartbeat(job)

    if found_by == "sweep":
        assert inference.inference_jobs_sweep() == 0  # failed, not sent again
    else:  # the broker delivers the message of the dead worker's task again
        assert inference.inference_job_run(job_id=job.pk).startswith("skipped")

    job.refresh_from_db()
    assert job.status == Status.FAILED and job.finished_at is not None
    assert job.deliveries == 3
    assert job.error == ("its worker stopped during each of its 3 runs (killed, out of memory, or "
                         "its node went away); it was not started again")
    assert not job.results_csv and not job.results_json
    assert result_files(media_root) == set()
    shown = api.get(f"{JOBS}{job.pk}/").json()
    assert (shown["status"], shown["error"], shown["deliveries"]) == ("failed", job.error, 3)
    assert shown["results_csv_url"] is None
    # Nothing sends or runs it again.
    assert inference.inference_jobs_sweep() == 0
    assert inference.inference_job_run(job_id=job.pk).startswith("skipped")
    job.refresh_from_db()
    assert (job.status, job.deliveries) == (Status.FAILED, 3)


def test_a_job_whose_worker_died_fewer_times_than_the_limit_runs_again_and_succeeds(
        owner, model, dataset, settings, monkeypatch, media_root):
    settings.JOB_MAX_DELIVERIES = 3
    job = queued_job(owner, model, dataset)
    with monkeypatch.context() as patched:
        die_when_recording_the_results(patched)
        for _ in range(2):
            with pytest.raises(WorkerKilled):
                inference.inference_job_run(job_id=job.pk)
            age_heartbeat(job)

    assert inference.inference_job_run(job_id=job.pk) == "succeeded"  # sent again by the sweep

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert (job.deliveries, job.read, job.done) == (3, 12, 12)
    assert result_files(media_root) == {job.results_csv.name, job.results_json.name}


def test_a_job_claimed_once_counts_one_delivery(owner, model, dataset, api,
                                                django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                             split="test")
    job.refresh_from_db()
    assert (job.status, job.deliveries) == (Status.SUCCEEDED, 1)
    assert inference.inference_job_run(job_id=job.pk).startswith("skipped")
    job.refresh_from_db()
    assert job.deliveries == 1


# --- results stored, then the database went away ------------------------------------------------


def outage_while_recording(job: InferenceJob, monkeypatch) -> None:
    """Run the job while the database refuses the update that records its results, for longer
    than the run retries it."""
    monkeypatch.setattr(inference, "RESULTS_RETRY_SECONDS", 0)
    with connection.execute_wrapper(Outage(RECORDING_RESULTS)), pytest.raises(OperationalError):
        inference.inference_job_run(job_id=job.pk)
    job.refresh_from_db()
    assert job.status == Status.RUNNING and not job.results_csv


@pytest.mark.django_db(transaction=True)
def test_results_a_run_could_not_record_are_removed_by_the_next_run(
        owner, model, dataset, monkeypatch, media_root):
    job = queued_job(owner, model, dataset)
    # Another job's file, whose name starts as this job's does.
    other = default_storage.save(f"inference/results/job-{job.pk}7.csv", ContentFile(b"x"))
    outage_while_recording(job, monkeypatch)
    left = files_of_the_current_run(job)
    assert result_files(media_root) == {other, *left}

    age_heartbeat(job)  # the database is back; the sweep hands the job to a worker
    app.control.purge()  # a message an earlier test left for a job of the same id is not this one's
    assert inference.inference_jobs_sweep() == 1  # tasks are eager: it ran just now

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.deliveries == 2
    assert {job.results_csv.name, job.results_json.name} == files_of_the_current_run(job)
    assert not left & files_of_the_current_run(job)
    assert result_files(media_root) == {other, job.results_csv.name, job.results_json.name}
    assert len(job.results_csv.read().decode().splitlines()) == 1 + 12


@pytest.mark.django_db(transaction=True)
def test_results_a_run_could_not_record_go_with_the_job_when_it_is_deleted(
        owner, model, dataset, api, monkeypatch, media_root):
    job = queued_job(owner, model, dataset)
    other = default_storage.save(f"inference/results/job-{job.pk}7.json", ContentFile(b"x"))
    # Names results had before each run got names of its own: the plain one, and the one the
    # storage gave a second file of that name.
    older = {default_storage.save(f"inference/results/job-{job.pk}.csv", ContentFile(b"x"))
             for _ in range(2)}
    assert len(older) == 2
    outage_while_recording(job, monkeypatch)
    assert len(result_files(media_root)) == 5

    assert api.delete(f"{JOBS}{job.pk}/").status_code == 204

    assert not InferenceJob.objects.filter(pk=job.pk).exists()
    assert result_files(media_root) == {other}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_brief_outage_while_recording_the_results_is_ridden_out_with_one_set_of_files(
        owner, model, dataset, api, monkeypatch, media_root, when):
    """``after``: the update was committed but its answer was lost; the retry finds the job
    already recording these files and keeps them."""
    monkeypatch.setattr(inference, "RESULTS_RETRY_SECONDS", 10)
    job = queued_job(owner, model, dataset)
    outage = Outage(RECORDING_RESULTS, when=when, times=1)
    with connection.execute_wrapper(outage):
        assert inference.inference_job_run(job_id=job.pk) == "succeeded"
    assert outage.times == 0

    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert result_files(media_root) == files_of_the_current_run(job)
    assert {job.results_csv.name, job.results_json.name} == files_of_the_current_run(job)
    response = api.get(f"{JOBS}{job.pk}/results/csv/")
    assert response.status_code == 200
    assert len(b"".join(response.streaming_content).decode().splitlines()) == 1 + 12

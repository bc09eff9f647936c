"""Training job services, in process: create, claim, run, cancel, retry, recover and sweep.

Test settings run Celery tasks inline, so a job queued on commit trains right there.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.conf import settings
from django.db import connection
from django.utils import timezone

from classifier.models import ModelVersion
from medml import dataset_io
from medml.config import ConfigError
from tests.factories import UserFactory
from tests.training.conftest import smoke
from training import services
from training.models import TrainingJob

Status = TrainingJob.Status
HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "seconds"}


def queued_job(owner, dataset, *, django_capture_on_commit_callbacks, **config) -> TrainingJob:
    """A job created through the service but not started (its on-commit enqueue is dropped)."""
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job, created = services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke", config=smoke(**config)
        )
    assert created and len(callbacks) == 1
    return job


@pytest.fixture
def new_job(owner, dataset, django_capture_on_commit_callbacks):
    def make(**config) -> TrainingJob:
        return queued_job(owner, dataset,
                          django_capture_on_commit_callbacks=django_capture_on_commit_callbacks,
                          **config)

    return make


def age_heartbeat(job: TrainingJob, seconds: float | None = None) -> None:
    """Make the job look abandoned: its last heartbeat older than the timeout."""
    seconds = seconds if seconds is not None else settings.JOB_HEARTBEAT_TIMEOUT + 5
    TrainingJob.objects.filter(pk=job.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=seconds)
    )


class WorkerDied(BaseException):
    """Stands in for the process disappearing: not an Exception, so nothing handles it."""


# --- creating ------------------------------------------------------------------------------------


def test_create_rejects_an_invalid_config_naming_the_fields_and_stores_nothing(owner, dataset):
    with pytest.raises(ConfigError) as caught:
        services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke",
            config={"epochs": 0, "learning_rate": -1, "augmentation": {"zoom_range": 5}},
        )
    assert set(caught.value.errors) == {"epochs", "learning_rate", "augmentation.zoom_range"}
    assert not TrainingJob.objects.exists()


def test_create_rejects_an_unknown_preset(owner, dataset):
    with pytest.raises(ConfigError) as caught:
        services.training_job_create(owner=owner, dataset=dataset, preset="nope")
    assert "preset" in caught.value.errors
    assert not TrainingJob.objects.exists()


def test_create_applies_the_preset_then_the_overrides(owner, dataset,
                                                      django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        job, created = services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke",
            config={"epochs": 3, "augmentation": {"enabled": True, "horizontal_flip": True}},
        )
    assert created
    job.refresh_from_db()
    assert job.status == Status.QUEUED
    assert job.preset == "smoke"
    assert job.config["architecture"] == "compact_cnn"  # from the preset
    assert job.config["batch_size"] == 32  # from the preset
    assert job.config["schedule"] == "constant"  # from the preset, not the default cosine
    assert job.config["epochs"] == 3  # overridden
    assert job.config["augmentation"]["horizontal_flip"] is True
    assert job.config["augmentation"]["vertical_flip"] is False  # default filled in
    assert job.total_epochs == 3
    assert job.name == "compact_cnn on Tiny blood"


def test_create_enqueues_only_once_the_transaction_commits(owner, dataset, monkeypatch,
                                                          django_capture_on_commit_callbacks):
    enqueued = []
    monkeypatch.setattr(services, "training_job_enqueue", lambda *, job: enqueued.append(job.pk))
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke")
        assert enqueued == []
    assert len(callbacks) == 1
    assert enqueued == [job.pk]


def test_a_repeated_idempotency_key_returns_the_first_job(owner, dataset,
                                                          django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first, created_first = services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke", idempotency_key="launch-1")
        again, created_again = services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke", config={"epochs": 5},
            idempotency_key="launch-1")
    assert (created_first, created_again) == (True, False)
    assert again.pk == first.pk
    assert TrainingJob.objects.count() == 1
    assert len(callbacks) == 1  # queued once


def test_the_same_idempotency_key_of_another_user_makes_a_new_job(
        owner, dataset, django_capture_on_commit_callbacks):
    other = UserFactory(username="piet")
    with django_capture_on_commit_callbacks(execute=False):
        mine, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                               idempotency_key="k")
        theirs, created = services.training_job_create(owner=other, dataset=dataset,
                                                       preset="smoke", idempotency_key="k")
    assert created and theirs.pk != mine.pk


# --- claiming ------------------------------------------------------------------------------------


def test_claiming_a_queued_job_gives_a_token_and_a_second_claim_gets_nothing(new_job):
    job = new_job()
    token = services.training_job_claim(job_id=job.pk)
    assert token
    assert services.training_job_claim(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    assert job.claim_token == token
    assert job.deliveries == 1
    assert job.started_at is not None and job.heartbeat_at is not None


def test_a_running_job_with_a_fresh_heartbeat_cannot_be_claimed(new_job):
    job = new_job()
    token = services.training_job_claim(job_id=job.pk)
    age_heartbeat(job, settings.JOB_HEARTBEAT_TIMEOUT - 10)
    assert services.training_job_claim(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.claim_token == token and job.deliveries == 1


def test_a_running_job_with_a_stale_heartbeat_is_taken_over(new_job):
    job = new_job()
    first = services.training_job_claim(job_id=job.pk)
    age_heartbeat(job)
    second = services.training_job_claim(job_id=job.pk)
    assert second and second != first
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    assert job.claim_token == second
    assert job.deliveries == 2
    assert "resuming from the last checkpoint" in job.log[-1]


def test_a_job_whose_worker_died_in_each_of_its_runs_is_failed_not_taken_over_again(
        new_job, settings):
    settings.JOB_MAX_DELIVERIES = 3
    job = new_job()
    for _ in range(3):  # each run's worker dies (out of memory, say) before the job ends
        assert services.training_job_claim(job_id=job.pk)
        age_heartbeat(job)
    workdir = services.job_workdir(job.pk)
    workdir.mkdir(parents=True)
    (workdir / "last.keras").write_bytes(b"checkpoint")

    assert services.training_job_run(job_id=job.pk).startswith("skipped")

    job.refresh_from_db()
    assert job.status == Status.FAILED and job.finished_at is not None
    assert job.deliveries == 3
    assert job.error.startswith("its worker stopped during each of its 3 runs")
    assert job.log[-1].endswith(f"failed: {job.error}")
    assert not workdir.exists()
    assert services.training_jobs_sweep() == 0  # not sent again


def claim_concurrently(job_id: int, workers: int = 6) -> list[str | None]:
    """Claims from several threads (each with its own database connection) at the same moment."""
    barrier = threading.Barrier(workers)

    def claim(_):
        try:
            barrier.wait()
            return services.training_job_claim(job_id=job_id)
        finally:
            connection.close()

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(claim, range(workers)))


@pytest.mark.django_db(transaction=True)
def test_of_simultaneous_claims_of_a_queued_job_exactly_one_wins(owner, dataset):
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, config={}, total_epochs=2)
    tokens = claim_concurrently(job.pk)
    winners = [token for token in tokens if token]
    assert len(winners) == 1
    job.refresh_from_db()
    assert job.claim_token == winners[0] and job.deliveries == 1


@pytest.mark.django_db(transaction=True)
def test_of_simultaneous_takeovers_of_an_abandoned_job_exactly_one_wins(owner, dataset):
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, config={}, total_epochs=2)
    services.training_job_claim(job_id=job.pk)
    age_heartbeat(job)
    tokens = claim_concurrently(job.pk)
    winners = [token for token in tokens if token]
    assert len(winners) == 1
    job.refresh_from_db()
    assert job.claim_token == winners[0] and job.deliveries == 2


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
def test_a_finished_job_is_never_claimed(new_job, status):
    job = new_job()
    TrainingJob.objects.filter(pk=job.pk).update(
        status=status, heartbeat_at=timezone.now() - timedelta(days=1))
    assert services.training_job_claim(job_id=job.pk) is None
    job.refresh_from_db()
    assert job.status == status and job.deliveries == 0


# --- running -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_smoke_run_succeeds_with_one_verified_model_history_and_manifest(
        owner, dataset, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                              config=smoke())
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.error == ""
    assert job.progress == 1.0
    assert job.current_epoch == 2 and job.finished_at is not None

    model = ModelVersion.objects.get()
    assert job.model_version == model
    assert model.dataset == dataset and model.owner == owner
    assert model.architecture == "compact_cnn"
    with model.artifact.open("rb") as artifact:
        assert dataset_io.sha256_of(artifact) == model.sha256

    assert [entry["epoch"] for entry in job.history] == [1, 2]
    for entry in job.history:
        assert set(entry) >= HISTORY_KEYS
    assert model.history == job.history
    assert model.metrics["n"] == 12  # the test split
    assert 0 <= model.metrics["accuracy"] <= 1 and "roc_auc" in model.metrics
    assert model.val_metrics["n"] == 12

    assert job.manifest["dataset"]["sha256"] == dataset.sha256
    assert job.manifest["seed"] == job.config["seed"] == 0
    assert {"tensorflow", "keras", "numpy"} <= set(job.manifest["libraries"])
    assert model.manifest == job.manifest
    assert any("registered" in line for line in job.log)
    assert not services.job_workdir(job.pk).exists()  # checkpoints removed

    # A redelivered message finds the job finished and does nothing.
    assert services.training_job_run(job_id=job.pk).startswith("skipped")
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED and job.deliveries == 1
    assert ModelVersion.objects.count() == 1


@pytest.mark.slow
def test_a_job_whose_training_raises_ends_failed_with_the_error(new_job, monkeypatch):
    def broken_train(**kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr("medml.fit.train", broken_train)
    job = new_job()
    assert services.training_job_run(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert job.error == "RuntimeError: the GPU caught fire"
    assert job.finished_at is not None
    assert "failed: RuntimeError: the GPU caught fire" in job.log[-1]
    assert not ModelVersion.objects.exists()


def test_a_job_stopped_at_the_time_limit_says_so(new_job, monkeypatch, settings):
    from celery.exceptions import SoftTimeLimitExceeded

    def train_past_the_limit(**kwargs):
        raise SoftTimeLimitExceeded()  # what Celery raises in the task at its soft time limit

    monkeypatch.setattr("medml.fit.train", train_past_the_limit)
    settings.CELERY_TASK_SOFT_TIME_LIMIT = 7200
    job = new_job()
    assert services.training_job_run(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert job.error == ("stopped at the time limit of 7200 s that one run of a job may take "
                         "(CELERY_TASK_SOFT_TIME_LIMIT)")
    assert job.log[-1].endswith(f"failed: {job.error}")


@pytest.mark.slow
def test_a_failed_run_keeps_its_device_and_leaves_no_checkpoints(new_job, monkeypatch):
    import medml.fit

    def broken(model, data, config, hooks):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(medml.fit, "_test_metrics", broken)
    job = new_job(epochs=1)
    assert services.training_job_run(job_id=job.pk) == "failed"
    job.refresh_from_db()
    assert job.status == Status.FAILED and job.error == "RuntimeError: evaluation broke"
    assert job.device.startswith("CPU")  # recorded when training began
    assert not services.job_workdir(job.pk).exists()  # a retry starts afresh: nothing to keep


@pytest.mark.slow
def test_a_job_being_evaluated_shows_its_device_and_keeps_its_heartbeat(new_job, monkeypatch):
    import medml.fit

    monkeypatch.setattr(services, "HEARTBEAT_SECONDS", 0.0)
    real = medml.fit._test_metrics
    seen = {}

    def evaluate(model, data, config, hooks):
        row = TrainingJob.objects.get(pk=job.pk)
        seen["device"] = row.device
        metrics = real(model, data, config, hooks)
        # Predicting the test split beats, so a long evaluation is not taken for a dead worker.
        seen["beat"] = TrainingJob.objects.get(pk=job.pk).heartbeat_at > row.heartbeat_at
        return metrics

    monkeypatch.setattr(medml.fit, "_test_metrics", evaluate)
    job = new_job(epochs=1)
    assert services.training_job_run(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert seen == {"device": job.device, "beat": True} and job.device.startswith("CPU")


def test_batches_of_the_next_member_move_the_job_past_epochs_an_early_stop_left_unused(new_job):
    # Member 1 of an ensemble of 10-epoch members stopped after epoch 3; member 2's batches say
    # that the job is 10 epochs in, so its page names member 2 and its progress counts 10 epochs.
    job = new_job(epochs=10, ensemble_size=2)
    token = services.training_job_claim(job_id=job.pk)
    hooks = services._JobHooks(job.pk, token)
    hooks.on_epoch_end(epoch=3, total_epochs=20, metrics={"loss": 0.5})
    hooks._last_beat = 0.0  # the next heartbeat is due
    hooks.on_batch_end(epoch=11, batch=2, total_batches=4)
    job.refresh_from_db()
    assert (job.current_epoch, job.batch_progress) == (10, 0.5)
    assert job.progress == pytest.approx(10.5 / 20)


# --- cancelling ----------------------------------------------------------------------------------


def test_cancelling_a_queued_job_ends_it_at_once_and_a_later_run_does_nothing(new_job):
    job = new_job()
    job = services.training_job_cancel(job=job)
    assert job.status == Status.CANCELLED
    assert job.finished_at is not None
    assert "cancelled before it started" in job.log[-1]
    assert services.training_job_run(job_id=job.pk).startswith("skipped")
    job.refresh_from_db()
    assert job.status == Status.CANCELLED and job.deliveries == 0


def test_cancelling_a_running_job_asks_it_to_stop(new_job):
    job = new_job()
    services.training_job_claim(job_id=job.pk)
    job = services.training_job_cancel(job=job)
    assert job.status == Status.RUNNING
    assert job.cancel_requested is True


@pytest.mark.parametrize("status", [Status.SUCCEEDED, Status.FAILED, Status.CANCELLED])
def test_a_finished_job_cannot_be_cancelled(new_job, status):
    job = new_job()
    TrainingJob.objects.filter(pk=job.pk).update(status=status)
    with pytest.raises(services.JobStateError):
        services.training_job_cancel(job=job)
    job.refresh_from_db()
    assert job.status == status and job.cancel_requested is False


@pytest.mark.slow
def test_a_run_cancelled_during_its_first_epoch_ends_cancelled_without_a_model(new_job):
    job = new_job(epochs=3)
    seen = []

    def cancel_after_first_epoch(epoch, metrics):
        seen.append(epoch)
        if epoch == 1:
            services.training_job_cancel(job=TrainingJob.objects.get(pk=job.pk))

    assert services.training_job_run(job_id=job.pk, on_epoch=cancel_after_first_epoch) == \
        "cancelled"
    job.refresh_from_db()
    assert seen == [1]
    assert job.status == Status.CANCELLED
    assert job.model_version is None and not ModelVersion.objects.exists()
    assert [entry["epoch"] for entry in job.history] == [1]
    assert "cancelled after epoch 1" in job.log[-1]
    assert not services.job_workdir(job.pk).exists()


# --- retrying ------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED])
def test_retrying_a_failed_or_cancelled_job_queues_attempt_two(
        new_job, status, django_capture_on_commit_callbacks):
    job = new_job(epochs=3)
    TrainingJob.objects.filter(pk=job.pk).update(status=status, error="boom")
    job.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        retry = services.training_job_retry(job=job)
    assert len(callbacks) == 1
    retry.refresh_from_db()
    assert retry.pk != job.pk
    assert retry.status == Status.QUEUED
    assert retry.attempt == 2 and retry.retry_of == job
    assert retry.config == job.config and retry.total_epochs == 3
    assert retry.error == "" and retry.deliveries == 0


def test_a_job_is_retried_only_once(new_job, django_capture_on_commit_callbacks):
    job = new_job()
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.FAILED)
    job.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        retry = services.training_job_retry(job=job)
        with pytest.raises(services.JobStateError, match=f"already retried as job #{retry.pk}"):
            services.training_job_retry(job=job)
    assert len(callbacks) == 1 and TrainingJob.objects.count() == 2


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING, Status.SUCCEEDED])
def test_a_job_that_has_not_failed_cannot_be_retried(new_job, status):
    job = new_job()
    TrainingJob.objects.filter(pk=job.pk).update(status=status)
    job.refresh_from_db()
    with pytest.raises(services.JobStateError):
        services.training_job_retry(job=job)
    assert TrainingJob.objects.count() == 1


# --- recovering ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_job_whose_worker_died_resumes_from_its_checkpoint_and_succeeds_once(new_job):
    job = new_job(epochs=3)

    def die_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise WorkerDied

    with pytest.raises(WorkerDied):
        services.training_job_run(job_id=job.pk, on_epoch=die_after_first_epoch)
    job.refresh_from_db()
    assert job.status == Status.RUNNING
    assert job.current_epoch == 1 and len(job.history) == 1
    workdir = services.job_workdir(job.pk)
    assert (workdir / "last.keras").exists() and (workdir / "state.json").exists()

    # Another delivery while the heartbeat is fresh leaves the job alone.
    assert services.training_job_run(job_id=job.pk).startswith("skipped")

    age_heartbeat(job)
    epochs_trained = []
    assert services.training_job_run(
        job_id=job.pk, on_epoch=lambda epoch, metrics: epochs_trained.append(epoch)
    ) == "succeeded"
    job.refresh_from_db()
    assert epochs_trained == [2, 3]  # resumed, not restarted
    assert job.status == Status.SUCCEEDED, job.error
    assert job.deliveries == 2
    assert [entry["epoch"] for entry in job.history] == [1, 2, 3]
    assert any("resuming after epoch 1" in line for line in job.log)
    assert ModelVersion.objects.filter(training_job=job).count() == 1
    assert ModelVersion.objects.count() == 1


def test_the_sweep_requeues_stale_running_jobs_and_leaves_live_ones(new_job, monkeypatch):
    stale, live, queued = new_job(), new_job(), new_job()
    services.training_job_claim(job_id=stale.pk)
    services.training_job_claim(job_id=live.pk)
    age_heartbeat(stale)
    requeued = []
    monkeypatch.setattr(services, "training_job_enqueue", lambda *, job: requeued.append(job.pk))
    assert services.training_jobs_sweep() == 1
    assert requeued == [stale.pk]
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED  # waiting for its own message, not the sweep's


@pytest.mark.slow
def test_a_swept_job_is_trained_by_the_redelivery(new_job):
    job = new_job()
    services.training_job_claim(job_id=job.pk)  # a worker took it, then vanished
    age_heartbeat(job)
    assert services.training_jobs_sweep() == 1  # inline in tests: the redelivery trains it
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.deliveries == 2
    assert ModelVersion.objects.filter(training_job=job).count() == 1


def test_the_sweep_finalises_a_stale_job_whose_cancel_was_requested(new_job):
    stale, live = new_job(), new_job()
    for job in (stale, live):
        services.training_job_claim(job_id=job.pk)
        services.training_job_cancel(job=job)
    age_heartbeat(stale)
    assert services.training_jobs_sweep() == 0
    stale.refresh_from_db()
    live.refresh_from_db()
    assert stale.status == Status.CANCELLED and stale.finished_at is not None
    assert "cancelled (its worker had stopped)" in stale.log[-1]
    assert live.status == Status.RUNNING and live.cancel_requested


@pytest.mark.slow
def test_a_worker_that_lost_its_job_while_finishing_registers_nothing_and_keeps_the_checkpoints(
        new_job):
    job = new_job(epochs=2)

    def taken_over_during_the_last_epoch(epoch, metrics):
        if epoch == 2:  # another worker claimed the job and resumes from these checkpoints
            TrainingJob.objects.filter(pk=job.pk).update(claim_token="another-worker")

    outcome = services.training_job_run(job_id=job.pk, on_epoch=taken_over_during_the_last_epoch)
    job.refresh_from_db()
    assert outcome == "lost the job to another worker"
    assert job.status == Status.RUNNING and job.claim_token == "another-worker"
    assert not ModelVersion.objects.exists()
    assert (services.job_workdir(job.pk) / "state.json").exists()


@pytest.mark.slow
def test_a_run_finished_by_the_sweep_meanwhile_is_not_turned_into_a_success(new_job):
    job = new_job(epochs=2)

    def finalised_by_the_sweep(epoch, metrics):
        if epoch == 2:  # cancel requested, heartbeat went stale, the sweep closed the job
            TrainingJob.objects.filter(pk=job.pk).update(
                cancel_requested=True, status=Status.CANCELLED, finished_at=timezone.now())

    outcome = services.training_job_run(job_id=job.pk, on_epoch=finalised_by_the_sweep)
    job.refresh_from_db()
    assert outcome == "lost the job to another worker"
    assert job.status == Status.CANCELLED
    assert job.model_version is None and not ModelVersion.objects.exists()
    assert not services.job_workdir(job.pk).exists()  # nobody will resume a finished job


@pytest.mark.slow
def test_a_run_whose_monitored_metric_never_was_finite_still_succeeds(new_job, monkeypatch):
    from medml import fit

    real_train = fit.train

    def diverged_train(**kwargs):
        result = real_train(**kwargs)
        result.best_metric = None  # what medml reports when validation scores were NaN
        return result

    monkeypatch.setattr(fit, "train", diverged_train)
    job = new_job(epochs=1)
    assert services.training_job_run(job_id=job.pk) == "succeeded"
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED
    assert any("registered" in line and "val_accuracy undefined" in line for line in job.log)
    assert not services.job_workdir(job.pk).exists()


def status_seen_by_another_connection(job_id: int) -> str:
    with ThreadPoolExecutor(1) as pool:
        def read():
            try:
                return TrainingJob.objects.values_list("status", flat=True).get(pk=job_id)
            finally:
                connection.close()

        return pool.submit(read).result()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("outcome", ["failed", "succeeded"])
def test_no_reader_sees_a_finished_job_before_its_outcome_is_logged(owner, dataset, monkeypatch,
                                                                    outcome):
    # The job page stops polling as soon as the job is finished: a line logged later never shows.
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, total_epochs=1,
                                     config=services.validate_training_config(
                                         preset="smoke", config=smoke(epochs=1)))
    if outcome == "failed":
        def broken_train(**kwargs):
            raise RuntimeError("out of memory")

        monkeypatch.setattr("medml.fit.train", broken_train)
    seen = {}
    append_log = services._append_log

    def observing_append_log(job_id, *lines):
        if any(line.startswith(("failed:", "registered")) for line in lines):
            seen["status"] = status_seen_by_another_connection(job_id)
        append_log(job_id, *lines)

    monkeypatch.setattr(services, "_append_log", observing_append_log)
    assert services.training_job_run(job_id=job.pk) == outcome
    assert seen == {"status": Status.RUNNING}
    job.refresh_from_db()
    assert job.status == outcome

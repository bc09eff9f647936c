"""Training in a real Celery worker process, and recovery when that process is killed.

The worker runs with the production settings (tasks not eager) against the test database and
broker, with a short heartbeat timeout and sweep interval so that recovery takes seconds.
"""

from __future__ import annotations

import signal

import pytest

from classifier.models import ModelVersion
from tests.factories import DatasetFactory
from tests.training.conftest import smoke, wait_until
from training import services
from training.models import TERMINAL_STATUSES, TrainingJob

pytestmark = pytest.mark.slow

Status = TrainingJob.Status
# Enough training images that an epoch takes about a second: time to see the job mid-run.
RECOVERY_COUNTS = {"train": [48, 48, 48], "val": [4, 4, 4], "test": [4, 4, 4]}


def describe(job: TrainingJob, *workers) -> str:
    job.refresh_from_db()
    logs = "\n".join(f"--- {worker.log_path.name} ---\n{worker.log()[-4000:]}" for worker in workers)
    return (f"job #{job.pk} is {job.status}, epoch {job.current_epoch}/{job.total_epochs}, "
            f"deliveries {job.deliveries}, error {job.error!r}\njob log:\n"
            + "\n".join(job.log) + f"\n{logs}")


def wait_for(job: TrainingJob, condition, *, worker, timeout: float, others=()) -> None:
    """Poll until ``condition(job row)``; fail at once, with the logs, if the worker dies."""

    def check():
        if not worker.is_alive():
            pytest.fail(f"the worker exited with {worker.process.returncode}. "
                        + describe(job, *others, worker))
        return condition(TrainingJob.objects.get(pk=job.pk))

    wait_until(check, timeout=timeout, interval=0.1,
               describe=lambda: describe(job, *others, worker))


def test_a_worker_trains_a_queued_job_to_one_registered_model(celery_worker_process, owner,
                                                              dataset):
    worker = celery_worker_process()
    job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                          config=smoke(epochs=3))

    wait_for(job, lambda row: row.status in TERMINAL_STATUSES, worker=worker, timeout=120)
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, describe(job, worker)
    assert [entry["epoch"] for entry in job.history] == [1, 2, 3], describe(job, worker)
    assert job.worker_pid and job.worker_pid != worker.pid  # trained in the pool's child
    assert job.deliveries >= 1
    assert ModelVersion.objects.get() == job.model_version
    assert worker.is_alive()


def test_a_job_survives_its_worker_being_killed_and_resumes_on_the_next_one(
        celery_worker_process, owner):
    dataset = DatasetFactory(owner=owner, name="Recovery set", class_counts=RECOVERY_COUNTS)
    bystander = TrainingJob.objects.create(owner=owner, dataset=dataset, preset="smoke",
                                           config={"epochs": 2}, total_epochs=2)
    first = celery_worker_process(name="first")
    job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                          config=smoke(epochs=8))

    wait_for(job, lambda row: row.current_epoch >= 2, worker=first, timeout=120)
    first.kill(signal.SIGKILL)
    job.refresh_from_db()
    killed_at_epoch = job.current_epoch
    assert job.status == Status.RUNNING, describe(job, first)
    assert killed_at_epoch < 8
    assert not ModelVersion.objects.exists()

    second = celery_worker_process(name="second")
    wait_for(job, lambda row: row.status in TERMINAL_STATUSES, worker=second, others=[first],
             timeout=150)
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, describe(job, first, second)
    assert job.deliveries >= 2
    assert [entry["epoch"] for entry in job.history] == list(range(1, 9))
    resumed = [line for line in job.log if "resuming after epoch" in line]
    assert resumed, describe(job, first, second)
    assert int(resumed[-1].rsplit(" ", 1)[-1]) >= killed_at_epoch  # not from scratch
    assert ModelVersion.objects.filter(training_job=job).count() == 1
    assert ModelVersion.objects.count() == 1

    bystander.refresh_from_db()
    assert bystander.status == Status.QUEUED and bystander.deliveries == 0

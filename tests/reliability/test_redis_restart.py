"""The broker is killed and restarted empty while jobs are queued: the sweep sends the missing
messages again, and every job then runs exactly once.

Reproduce: ``.venv/bin/python -m pytest tests/reliability/test_redis_restart.py -q``
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from classifier.models import ModelVersion
from medplatform.celery import waiting_task_args
from tests.factories import DatasetFactory, UserFactory
from tests.reliability.conftest import logs_of
from tests.training.conftest import TINY_COUNTS, smoke, wait_until
from training import inference, services
from training.models import TERMINAL_STATUSES, InferenceJob, TrainingJob

Status = TrainingJob.Status
TRAINING_TASK = "training.tasks.run_training_job"
INFERENCE_TASK = "training.tasks.run_inference_job"


def waiting_ids(task: str) -> list[int]:
    args = waiting_task_args(task)
    assert args is not None, "the private broker could not be read"
    return sorted(arg[0] for arg in args)


def test_the_sweep_resends_only_the_messages_the_broker_lost(transactional_db, private_broker):
    """No worker: the queue is inspected directly, before and after a restart of the broker."""
    owner = UserFactory(username="rita")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    jobs = [services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                         config=smoke(epochs=1))[0] for _ in range(3)]
    ids = sorted(job.pk for job in jobs)
    assert waiting_ids(TRAINING_TASK) == ids

    # Messages present: sweeping (with no grace period) sends nothing more.
    assert services.training_jobs_sweep(queued_grace=0) == 0
    assert waiting_ids(TRAINING_TASK) == ids

    private_broker.kill()
    private_broker.start()  # empty: it kept nothing
    assert waiting_ids(TRAINING_TASK) == []

    # Within the grace period a queued job is left alone (its message may be on its way).
    assert services.training_jobs_sweep(queued_grace=3600) == 0
    assert services.training_jobs_sweep(queued_grace=0) == 3
    assert waiting_ids(TRAINING_TASK) == ids
    assert services.training_jobs_sweep(queued_grace=0) == 0  # not sent twice
    assert waiting_ids(TRAINING_TASK) == ids


@pytest.mark.slow
def test_jobs_queued_when_the_broker_died_all_run_once(private_broker, worker_processes):
    owner = UserFactory(username="rosa")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    jobs = [services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                         config=smoke(epochs=2))[0] for _ in range(3)]
    private_broker.kill()
    private_broker.start()
    assert waiting_ids(TRAINING_TASK) == []

    # The beat's sweep would do this after JOB_QUEUED_GRACE; here it is done at once.
    assert services.training_jobs_sweep(queued_grace=0) == len(jobs)
    worker = worker_processes(heartbeat_timeout=30)

    def all_ended():
        return all(row.status in TERMINAL_STATUSES
                   for row in TrainingJob.objects.filter(pk__in=[job.pk for job in jobs]))

    wait_until(all_ended, timeout=180, interval=0.5, describe=lambda: logs_of(worker))
    for job in jobs:
        job.refresh_from_db()
        assert job.status == Status.SUCCEEDED, (job.error, logs_of(worker))
        assert job.deliveries == 1  # claimed once: it ran once
        assert ModelVersion.objects.filter(training_job=job).count() == 1
    assert ModelVersion.objects.count() == len(jobs)

    # The same for a batch inference job: queued, broker restarted, swept, run once.
    model = jobs[0].model_version
    worker.kill()
    batch = inference.inference_job_create(owner=owner, model_version=model, dataset=dataset,
                                           split="test")
    assert waiting_ids(INFERENCE_TASK) == [batch.pk]
    private_broker.kill()
    private_broker.start()
    assert inference.inference_jobs_sweep(queued_grace=0) == 1
    assert inference.inference_jobs_sweep(queued_grace=0) == 0
    worker = worker_processes(name="second", heartbeat_timeout=30)
    wait_until(lambda: InferenceJob.objects.get(pk=batch.pk).status in TERMINAL_STATUSES,
               timeout=120, interval=0.5, describe=lambda: logs_of(worker))
    batch.refresh_from_db()
    assert batch.status == Status.SUCCEEDED, (batch.error, logs_of(worker))
    assert batch.done == batch.total == sum(TINY_COUNTS["test"])


def test_a_job_whose_worker_died_is_sent_again_once_while_no_worker_takes_it(
        transactional_db, private_broker):
    owner = UserFactory(username="rhea")
    dataset = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    job, _ = services.training_job_create(owner=owner, dataset=dataset, preset="smoke",
                                          config=smoke(epochs=1))
    services.training_job_claim(job_id=job.pk)  # a worker took it ...
    private_broker.kill()
    private_broker.start()  # ... its message is gone with the broker's memory
    an_hour_ago = timezone.now() - timedelta(hours=1)
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=an_hour_ago)  # ... and it died
    assert services.training_jobs_sweep() == 1
    assert waiting_ids(TRAINING_TASK) == [job.pk]
    # Sweeps until a worker comes back send nothing more: the message is still waiting.
    assert services.training_jobs_sweep() == 0
    assert services.training_jobs_sweep() == 0
    assert waiting_ids(TRAINING_TASK) == [job.pk]

"""Celery tasks. Each one is thin: take an id, call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from training import services

# Retries of a job task that met an unreachable database: 1, 2, 4, ... 60 s apart (with jitter),
# about a quarter of an hour in all. A job still queued after that is sent again by the sweep.
DATABASE_RETRIES = 20
DATABASE_RETRY_BACKOFF_MAX = 60


def job_task(**options):
    """The reliability settings every long job shares.

    Late acknowledgement with reject-on-worker-lost means a worker that dies mid-job leaves the
    message to be delivered again; the service's atomic claim makes that redelivery safe. A
    database that cannot be reached makes the task retry with exponential backoff instead of
    failing the job. Queues are assigned by ``task_routes`` in medplatform/celery.py
    (``training``, ``inference``).
    """
    return shared_task(
        acks_late=True,
        reject_on_worker_lost=True,
        soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        time_limit=settings.CELERY_TASK_TIME_LIMIT,
        autoretry_for=services.DATABASE_UNAVAILABLE,
        retry_backoff=1,
        retry_backoff_max=DATABASE_RETRY_BACKOFF_MAX,
        retry_jitter=True,
        max_retries=DATABASE_RETRIES,
        **options,
    )


@job_task()
def run_training_job(job_id: int) -> str:
    return services.training_job_run(job_id=job_id)


@job_task()
def run_inference_job(job_id: int) -> str:
    from training.inference import inference_job_run

    return inference_job_run(job_id=job_id)


@shared_task(ignore_result=True)
def sweep_stale_jobs() -> int:
    from training.inference import inference_jobs_sweep

    return services.training_jobs_sweep() + inference_jobs_sweep()

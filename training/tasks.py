"""Celery tasks. Each one is thin: take an id, call a service."""

from __future__ import annotations

from celery import shared_task
from django.conf import settings

from training import services


def job_task(*, queue: str, **options):
    """The reliability settings every long job shares.

    Late acknowledgement with reject-on-worker-lost means a worker that dies mid-job leaves the
    message to be delivered again; the service's atomic claim makes that redelivery safe.
    """
    return shared_task(
        acks_late=True,
        reject_on_worker_lost=True,
        queue=queue,
        soft_time_limit=settings.CELERY_TASK_SOFT_TIME_LIMIT,
        time_limit=settings.CELERY_TASK_TIME_LIMIT,
        **options,
    )


@job_task(queue="training")
def run_training_job(job_id: int) -> str:
    return services.training_job_run(job_id=job_id)


@shared_task(ignore_result=True)
def sweep_stale_jobs() -> int:
    return services.training_jobs_sweep()

"""Training jobs: create, claim, run, cancel, retry and recover.

A job row is the source of truth; the Celery message only says "look at job N". Every step that
changes a job's owner-worker is a conditional UPDATE, so at most one worker trains a job at a time
and a redelivered or duplicated message does nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from classifier import selectors as catalog_selectors
from classifier import services as catalog_services
from classifier import services_registry as registry_services
from classifier.models import Dataset
from training.models import ACTIVE_STATUSES, TrainingJob

logger = logging.getLogger(__name__)

Status = TrainingJob.Status
MAX_LOG_LINES = 500
HEARTBEAT_SECONDS = 2.0


class JobStateError(Exception):
    """An operation that the job's current state does not allow (e.g. retrying a running job)."""


class JobLost(Exception):
    """This worker no longer holds the job (it was cancelled for good or taken over)."""


def _config_from(*, preset: str, overrides: dict):
    from medml.config import TrainConfig, resolve_preset

    return resolve_preset(preset, overrides) if preset else TrainConfig.from_dict(overrides)


def validate_training_config(*, preset: str = "", config: dict | None = None) -> dict:
    """Validated, complete config as a dict; raises ``medml.config.ConfigError`` with field errors."""
    return _config_from(preset=preset, overrides=dict(config or {})).to_dict()


def training_job_enqueue(*, job: TrainingJob) -> None:
    from training.tasks import run_training_job

    run_training_job.apply_async(args=[job.pk])


def training_job_create(
    *, owner, dataset: Dataset, config: dict | None = None, preset: str = "", name: str = "",
    idempotency_key: str = "",
) -> tuple[TrainingJob, bool]:
    """Validate a config and queue a training job; returns ``(job, created)``.

    With an ``idempotency_key``, a repeated request returns the job the first one created.
    """
    if idempotency_key:
        existing = TrainingJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    full_config = validate_training_config(preset=preset, config=config)
    try:
        with transaction.atomic():
            job = TrainingJob.objects.create(
                owner=owner, dataset=dataset, config=full_config, preset=preset,
                name=name or f"{full_config['architecture']} on {dataset.name}",
                total_epochs=full_config["epochs"], idempotency_key=idempotency_key,
            )
            transaction.on_commit(lambda: training_job_enqueue(job=job))
    except IntegrityError:
        if not idempotency_key:
            raise
        return TrainingJob.objects.get(owner=owner, idempotency_key=idempotency_key), False
    return job, True


def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job at once; ask a running one to stop (it does within a batch)."""
    with transaction.atomic():
        cancelled = TrainingJob.objects.filter(pk=job.pk, status=Status.QUEUED).update(
            status=Status.CANCELLED, cancel_requested=True, finished_at=timezone.now()
        )
        if cancelled:
            _append_log(job.pk, "cancelled before it started")
    if not cancelled and not TrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING).update(
        cancel_requested=True
    ):
        job.refresh_from_db()
        raise JobStateError(f"job #{job.pk} is {job.status}; only queued or running jobs cancel")
    job.refresh_from_db()
    return job


def training_job_retry(*, job: TrainingJob) -> TrainingJob:
    """Queue a failed or cancelled job again, as a new attempt with the same config."""
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise JobStateError(f"job #{job.pk} is {job.status}; only failed or cancelled jobs retry")
    with transaction.atomic():
        new = TrainingJob.objects.create(
            owner=job.owner, dataset=job.dataset, config=job.config, preset=job.preset,
            name=job.name, total_epochs=job.total_epochs, attempt=job.attempt + 1, retry_of=job,
        )
        transaction.on_commit(lambda: training_job_enqueue(job=new))
    return new


def _append_log(job_id: int, *lines: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().only("log").get(pk=job_id)
        job.log = (job.log + [f"{stamp} {line}" for line in lines])[-MAX_LOG_LINES:]
        TrainingJob.objects.filter(pk=job_id).update(log=job.log)


# --- Running a job (inside a worker) -------------------------------------------------------------


def training_job_claim(*, job_id: int) -> str | None:
    """Take the job for this worker; returns a claim token, or None when someone else has it.

    A queued job is claimed outright. A running job is taken over only when its heartbeat is
    older than ``JOB_HEARTBEAT_TIMEOUT`` (its worker died); training then resumes from the last
    checkpoint. Finished jobs are never touched.
    """
    token = uuid.uuid4().hex
    now = timezone.now()
    worker = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(),
              "claim_token": token, "heartbeat_at": now, "deliveries": F("deliveries") + 1}
    jobs = TrainingJob.objects.filter(pk=job_id, cancel_requested=False)
    if jobs.filter(status=Status.QUEUED).update(status=Status.RUNNING, started_at=now, **worker):
        return token
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    if jobs.filter(status=Status.RUNNING, heartbeat_at__lt=stale).update(**worker):
        _append_log(job_id, "previous worker stopped answering; resuming from the last checkpoint")
        return token
    return None


class _JobHooks:
    """Connects medml's training loop to the job row: progress, history, logs, cancel, liveness."""

    def __init__(self, job_id: int, token: str, on_epoch: Callable[[int, dict], None] | None = None):
        self.job_id = job_id
        self.token = token
        self.on_epoch = on_epoch
        self._last_beat = 0.0
        self._cancel = False

    def _mine(self):
        return TrainingJob.objects.filter(pk=self.job_id, claim_token=self.token,
                                          status=Status.RUNNING)

    def _beat(self, **fields) -> None:
        if not self._mine().update(heartbeat_at=timezone.now(), **fields):
            raise JobLost(f"job #{self.job_id} is no longer held by this worker")
        self._last_beat = time.monotonic()
        self._cancel = self._cancel_requested()

    def _cancel_requested(self) -> bool:
        return TrainingJob.objects.filter(pk=self.job_id, cancel_requested=True).exists()

    def on_train_begin(self, *, total_epochs: int, resumed_from_epoch: int) -> None:
        self._beat(total_epochs=total_epochs, current_epoch=resumed_from_epoch)
        if resumed_from_epoch:
            self.log(f"resuming after epoch {resumed_from_epoch}")

    def on_batch_end(self, *, epoch: int, batch: int, total_batches: int) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._beat(batch_progress=batch / max(total_batches, 1))

    def on_epoch_end(self, *, epoch: int, total_epochs: int, metrics: dict) -> None:
        job = TrainingJob.objects.only("history").get(pk=self.job_id)
        history = [h for h in job.history if h.get("epoch") != epoch] + [{"epoch": epoch, **metrics}]
        self._beat(current_epoch=epoch, batch_progress=0.0, history=history)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and k != "seconds")
        self.log(f"epoch {epoch}/{total_epochs}: {shown}")
        if self.on_epoch:
            self.on_epoch(epoch, metrics)
        # Heartbeats are throttled, so a cancel could otherwise go unseen for a whole short
        # epoch; one query per epoch makes it take effect before the next one starts.
        self._cancel = self._cancel_requested()

    def should_stop(self) -> bool:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._beat()
        return self._cancel

    def log(self, message: str) -> None:
        logger.info("job %s: %s", self.job_id, message)
        _append_log(self.job_id, message)


def job_workdir(job_id: int) -> Path:
    return Path(settings.WORK_DIR) / f"training-job-{job_id}"


def _manifest(job: TrainingJob, device: str) -> dict:
    import medplatform
    from medml.runtime import library_versions

    return {
        "dataset": {"id": job.dataset_id, "name": job.dataset.name, "sha256": job.dataset.sha256},
        "config": job.config,
        "seed": job.config.get("seed"),
        "libraries": library_versions(),
        "platform_version": medplatform.__version__,
        "device": device,
        "worker_host": socket.gethostname(),
    }


def _finish(job_id: int, token: str, *, log: str, **fields) -> bool:
    """End a job this worker holds, with its last log line in the same commit.

    Pages stop polling once a job is finished, so the outcome must not be logged after it.
    """
    with transaction.atomic():
        finished = bool(TrainingJob.objects.filter(pk=job_id, claim_token=token,
                                                   status=Status.RUNNING).update(
            finished_at=timezone.now(), **fields))
        if finished:
            _append_log(job_id, log)
    return finished


def training_job_run(
    *, job_id: int, on_epoch: Callable[[int, dict], None] | None = None
) -> str:
    """Claim and train one job to a terminal state. Returns what happened, for logs.

    ``on_epoch(epoch, metrics)`` lets a caller in the same process follow progress.
    """
    from medml.config import TrainConfig
    from medml.fit import train

    token = training_job_claim(job_id=job_id)
    if token is None:
        return "skipped: finished, cancelled, or held by a live worker"
    job = TrainingJob.objects.select_related("dataset", "owner").get(pk=job_id)
    hooks = _JobHooks(job_id, token, on_epoch)
    workdir = job_workdir(job_id)
    try:
        config = TrainConfig.from_dict(job.config)
        data = catalog_selectors.dataset_arrays(dataset=job.dataset)
        hooks.log(f"training {config.architecture} on {job.dataset.name} "
                  f"({data.split_counts()['train']} training images)")
        result = train(config=config, data=data, workdir=workdir, hooks=hooks,
                       weights_dir=Path(settings.MEDML_WEIGHTS_DIR))
    except JobLost:
        return "lost the job to another worker"
    except Exception as exc:
        logger.exception("training job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"
        _finish(job_id, token, status=Status.FAILED, error=error, log=f"failed: {error}")
        return "failed"
    TrainingJob.objects.filter(pk=job_id).update(device=result.device)
    if result.cancelled:
        outcome = "cancelled" if _finish(
            job_id, token, status=Status.CANCELLED,
            log=f"cancelled after epoch {result.epochs_completed}") else "lost"
    else:
        outcome = "succeeded" if _register_result(job, token, result) else "lost"
    # After a takeover the checkpoints belong to the worker resuming from them.
    if not TrainingJob.objects.filter(pk=job_id, status=Status.RUNNING).exists():
        shutil.rmtree(workdir, ignore_errors=True)
    return "lost the job to another worker" if outcome == "lost" else outcome


def _register_result(job: TrainingJob, token: str, result) -> bool:
    """Record the best checkpoint as the job's one model, with the job's success, atomically.

    Returns False, registering nothing, when this worker no longer holds a running job.
    """
    manifest = _manifest(job, result.device)
    with transaction.atomic():
        locked = TrainingJob.objects.select_for_update().get(pk=job.pk)
        if (locked.model_version_id or locked.claim_token != token
                or locked.status != Status.RUNNING):
            return False  # taken over, or finished meanwhile (e.g. by the sweep)
        model = catalog_services.model_version_register(
            name=f"{job.dataset.slug}-{job.config['architecture']}",
            architecture=job.config["architecture"], dataset=job.dataset, owner=job.owner,
            artifact_path=result.model_path, config=job.config,
            metrics=result.test_metrics or {}, val_metrics=result.val_metrics,
            history=result.history, num_params=result.num_params,
            train_seconds=result.train_seconds, manifest=manifest,
        )
        TrainingJob.objects.filter(pk=job.pk).update(
            status=Status.SUCCEEDED, model_version=model, finished_at=timezone.now(),
            manifest=manifest, history=result.history, current_epoch=result.epochs_completed,
            batch_progress=0.0,
        )
        # best_metric is None when the monitored value was never finite (a diverged run).
        best = "undefined" if result.best_metric is None else f"{result.best_metric:.4f}"
        _append_log(job.pk, f"registered {model}: best epoch {result.best_epoch}, "
                            f"{result.monitor} {best}")
    # Replace the basic test metrics with the full report (calibration, ROC, intervals) and keep
    # the per-image test predictions that paired comparisons need. The model stays registered,
    # with the basic metrics, if this fails.
    try:
        registry_services.model_version_evaluate(model_version=model)
    except Exception as exc:
        logger.exception("evaluating %s failed", model)
        _append_log(job.pk, f"full evaluation of {model} failed: {type(exc).__name__}: {exc}")
    return True


def training_jobs_sweep() -> int:
    """Requeue running jobs whose worker stopped sending heartbeats. Returns how many."""
    stale = timezone.now() - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    requeued = 0
    for job in TrainingJob.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale):
        if job.cancel_requested:
            with transaction.atomic():
                if TrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING,
                                              heartbeat_at=job.heartbeat_at).update(
                        status=Status.CANCELLED, finished_at=timezone.now()):
                    _append_log(job.pk, "cancelled (its worker had stopped)")
            continue
        training_job_enqueue(job=job)
        requeued += 1
    return requeued


__all__ = [
    "ACTIVE_STATUSES", "JobStateError", "training_job_cancel", "training_job_claim",
    "training_job_create", "training_job_retry", "training_job_run", "training_jobs_sweep",
    "validate_training_config",
]

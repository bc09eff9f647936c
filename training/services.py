"""Training jobs: create, claim, run, cancel, retry and recover.

A job row is the source of truth; the Celery message only says "look at job N". Every step that
changes a job's owner-worker is a conditional UPDATE, so at most one worker trains a job at a time
and a redelivered or duplicated message does nothing.

A running job outlives a brief database outage: heartbeats, progress and log lines that cannot be
written are skipped (training goes on), and the writes that end a job are retried with backoff,
in one transaction each, so that an outage never leaves a model without its job or a stored
artifact without its model.
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
from django.core.files.storage import default_storage
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import F
from django.utils import timezone

from classifier import selectors as catalog_selectors
from classifier import services as catalog_services
from classifier import services_registry as registry_services
from classifier.models import Dataset, ModelVersion
from training.models import ACTIVE_STATUSES, TrainingJob

logger = logging.getLogger(__name__)

Status = TrainingJob.Status
MAX_LOG_LINES = 500
HEARTBEAT_SECONDS = 2.0
# Errors that mean "the database is unreachable right now", not "this request is wrong".
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
# How long the writes that end a job keep retrying through a database outage.
DB_RETRY_SECONDS = 120.0
# A queued job whose broker message is missing for longer than this is sent again by the sweep.
DEFAULT_QUEUED_GRACE = 300.0
# Runs of one job whose worker died (``JOB_MAX_DELIVERIES``) before the job is failed rather than
# resumed again: a job that kills its worker every time (out of memory, say) would otherwise
# stay running for ever, taking a worker down at each delivery.
DEFAULT_MAX_DELIVERIES = 10


class JobStateError(Exception):
    """An operation that the job's current state does not allow (e.g. retrying a running job)."""


class JobLost(Exception):
    """This worker no longer holds the job (it was cancelled for good or taken over)."""


def reset_broken_connection() -> None:
    """Close a connection that an outage broke, so that the next query opens a fresh one."""
    if not connection.in_atomic_block:
        connection.close()


def retry_through_outage(action: Callable[[], object], *, what: str,
                         seconds: float = DB_RETRY_SECONDS, first_delay: float = 0.5,
                         max_delay: float = 8.0):
    """``action()``, tried again with exponential backoff while the database is unavailable.

    ``action`` must be safe to repeat: one transaction, or reads. After ``seconds`` the last
    error is raised (the Celery task then retries, or the sweep recovers the job).
    """
    deadline = time.monotonic() + seconds
    delay = first_delay
    while True:
        try:
            return action()
        except DATABASE_UNAVAILABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: database unavailable (%s); retrying in %.1f s",
                           what, str(exc).strip().splitlines()[0] if str(exc).strip() else
                           type(exc).__name__, delay)
            reset_broken_connection()
            time.sleep(delay)
            delay = min(delay * 2, max_delay)


def _config_from(*, preset: str, overrides: dict):
    from medml.config import TrainConfig, resolve_preset

    return resolve_preset(preset, overrides) if preset else TrainConfig.from_dict(overrides)


def validate_training_config(*, preset: str = "", config: dict | None = None) -> dict:
    """Validated, complete config as a dict; raises ``medml.config.ConfigError`` with field errors."""
    return _config_from(preset=preset, overrides=dict(config or {})).to_dict()


def training_job_enqueue(*, job: TrainingJob) -> None:
    from training.tasks import run_training_job

    run_training_job.apply_async(args=[job.pk])


def config_total_epochs(config: dict) -> int:
    """The epochs a job of ``config`` trains: an ensemble's members train one after the other."""
    return config["epochs"] * config.get("ensemble_size", 1)


def _check_config_fits_dataset(config: dict, dataset: Dataset) -> None:
    """What the worker would refuse about this dataset, refused before a job is queued.

    The same rules as :func:`medml.fit.train`'s data checks, read from the dataset's recorded
    counts: images to train and validate on, and with ``monitor="val_auc"`` every class in the
    validation split.
    """
    from medml.config import ConfigError

    counts = dataset.split_counts or {}
    missing = [split for split in ("train", "val") if not counts.get(split)]
    if missing:
        raise ConfigError({"dataset": [
            f"{dataset.name} has no {' and no '.join(missing)} images; training needs both."]})
    if config.get("monitor") == "val_auc":
        absent = [dataset.class_names[i] for i, n in enumerate(dataset.class_counts.get("val", [])) if not n]
        if absent:
            raise ConfigError({"monitor": [
                f"val_auc needs every class in the validation split, and {dataset.name} has no "
                f"validation image of {', '.join(absent)}: monitor val_loss or val_accuracy."]})


def training_job_create(
    *, owner, dataset: Dataset, config: dict | None = None, preset: str = "", name: str = "",
    idempotency_key: str = "",
) -> tuple[TrainingJob, bool]:
    """Validate a config and queue a training job; returns ``(job, created)``.

    With an ``idempotency_key``, a repeated request returns the job the first one created (its
    config is not checked again).

    Raises:
        medml.config.ConfigError: for an invalid config, a dataset without training or
            validation images, or ``monitor="val_auc"`` with a class missing from the
            validation split; nothing is created.
    """
    if idempotency_key:
        existing = TrainingJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    full_config = validate_training_config(preset=preset, config=config)
    _check_config_fits_dataset(full_config, dataset)
    try:
        with transaction.atomic():
            job = TrainingJob.objects.create(
                owner=owner, dataset=dataset, config=full_config, preset=preset,
                name=name or f"{full_config['architecture']} on {dataset.name}",
                total_epochs=config_total_epochs(full_config),
                idempotency_key=idempotency_key,
            )
            transaction.on_commit(lambda: training_job_enqueue(job=job))
    except IntegrityError:
        if not idempotency_key:
            raise
        return TrainingJob.objects.get(owner=owner, idempotency_key=idempotency_key), False
    return job, True


def training_job_cancel(*, job: TrainingJob) -> TrainingJob:
    """Cancel a queued job at once; ask a running one to stop.

    A running job stops at the end of the batch in progress once its next heartbeat (every
    ``HEARTBEAT_SECONDS``) or epoch end sees the request, and is then marked cancelled.

    Raises:
        JobStateError: for a job that is neither queued nor running; nothing is changed.
    """
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
    """Queue a failed or cancelled job again, as a new attempt with the same config.

    A job is retried once: a second request (a double click, another tab) is refused with the
    attempt that already exists, which is the one to retry if it fails too.

    Raises:
        JobStateError: for a job that is not failed or cancelled, or was already retried.
    """
    if job.status not in (Status.FAILED, Status.CANCELLED):
        raise JobStateError(f"job #{job.pk} is {job.status}; only failed or cancelled jobs retry")
    with transaction.atomic():
        TrainingJob.objects.select_for_update().only("pk").get(pk=job.pk)  # one retry at a time
        earlier = job.retries.order_by("pk").first()
        if earlier is not None:
            raise JobStateError(f"job #{job.pk} was already retried as job #{earlier.pk} "
                                f"(attempt {earlier.attempt})")
        new = TrainingJob.objects.create(
            owner=job.owner, dataset=job.dataset, config=job.config, preset=job.preset,
            name=job.name, total_epochs=job.total_epochs, attempt=job.attempt + 1, retry_of=job,
        )
        transaction.on_commit(lambda: training_job_enqueue(job=new))
    return new


def training_job_delete(*, job: TrainingJob) -> None:
    """Delete a finished job (failed, cancelled or succeeded); its checkpoints once committed.

    The job's state is read again under a row lock, so a job that a stale copy shows finished is
    not deleted while it runs. What the job leads to stays: a succeeded job's model remains in
    the registry (the link is the job's, ``model_version``), and a retry of the job, or the job
    it retried, loses only its link to this one (``retry_of`` is set to null). Deleting a job
    that is already gone (a double click, another tab) does nothing.

    Raises:
        JobStateError: for a queued or running job; nothing is changed.
    """
    workdir = job_workdir(job.pk)
    with transaction.atomic():
        locked = TrainingJob.objects.select_for_update().filter(pk=job.pk).first()
        if locked is None:
            return
        if locked.is_active:
            if locked.cancel_requested:
                raise JobStateError(f"job #{locked.pk} is being cancelled; delete it once it "
                                    f"has stopped")
            raise JobStateError(f"job #{locked.pk} is {locked.status}; cancel it first: only "
                                f"finished jobs can be deleted")
        locked.delete()
        transaction.on_commit(lambda: shutil.rmtree(workdir, ignore_errors=True))
    logger.info("job %s deleted (%s)", job.pk, locked.status)


def _append_log(job_id: int, *lines: str) -> None:
    stamp = timezone.now().strftime("%H:%M:%S")
    with transaction.atomic():
        job = TrainingJob.objects.select_for_update().only("log").filter(pk=job_id).first()
        if job is None:  # deleted (a finished job, while its worker still evaluated its model)
            return
        job.log = (job.log + [f"{stamp} {line}" for line in lines])[-MAX_LOG_LINES:]
        TrainingJob.objects.filter(pk=job_id).update(log=job.log)


# --- Running a job (inside a worker) -------------------------------------------------------------


def training_job_claim(*, job_id: int) -> str | None:
    """Take the job for this worker; returns a claim token, or None when someone else has it.

    A queued job is claimed outright. A running job is taken over only when its heartbeat is
    older than ``JOB_HEARTBEAT_TIMEOUT`` (its worker died); training then resumes from the last
    checkpoint. A job whose workers died in each of its last ``JOB_MAX_DELIVERIES`` runs is
    failed instead, with the reason. Finished jobs are never touched.
    """
    token = uuid.uuid4().hex
    now = timezone.now()
    worker = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(),
              "claim_token": token, "heartbeat_at": now, "deliveries": F("deliveries") + 1}
    jobs = TrainingJob.objects.filter(pk=job_id, cancel_requested=False)
    if jobs.filter(status=Status.QUEUED).update(status=Status.RUNNING, started_at=now, **worker):
        logger.info("job %s run %s: claimed the queued job", job_id, token[:8])
        return token
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    runs = _max_deliveries()
    error = (f"its worker stopped during each of its {runs} runs (killed, out of memory, or its "
             f"node went away); it was not started again")
    with transaction.atomic():
        failed = jobs.filter(status=Status.RUNNING, heartbeat_at__lt=stale,
                             deliveries__gte=runs).update(status=Status.FAILED, error=error,
                                                          finished_at=now)
        if failed:
            _append_log(job_id, f"failed: {error}")
    if failed:
        logger.warning("job %s: %s", job_id, error)
        # A retry is a new job that starts afresh: nothing will resume from these.
        shutil.rmtree(job_workdir(job_id), ignore_errors=True)
        return None
    if jobs.filter(status=Status.RUNNING, heartbeat_at__lt=stale).update(**worker):
        logger.info("job %s run %s: took the job over from a silent worker", job_id, token[:8])
        _log_quietly(job_id, "previous worker stopped answering; resuming from the last checkpoint")
        return token
    return None


class _JobHooks:
    """Connects medml's training loop to the job row: progress, history, logs, cancel, liveness.

    Every write is conditional on this run still holding the job (``JobLost`` otherwise). A write
    that fails because the database is briefly unreachable is skipped and training goes on: the
    next heartbeat tries again, and the final registration writes the full history. The worker's
    own log gets one line per completed epoch, tagged with the run, whether or not the database
    could record it: a trace of which run trained which epoch, and when.
    """

    def __init__(self, job_id: int, token: str, on_epoch: Callable[[int, dict], None] | None = None):
        self.job_id = job_id
        self.token = token
        self.on_epoch = on_epoch
        self._last_beat = 0.0
        self._cancel = False
        self._outage_reported = False

    def _mine(self):
        return TrainingJob.objects.filter(pk=self.job_id, claim_token=self.token,
                                          status=Status.RUNNING)

    def _trace(self, message: str) -> None:
        logger.info("job %s run %s: %s", self.job_id, self.token[:8], message)

    def _database_unavailable(self, exc: Exception) -> None:
        if not self._outage_reported:
            self._trace(f"database unavailable ({type(exc).__name__}); training goes on")
            self._outage_reported = True
        reset_broken_connection()
        self._last_beat = time.monotonic()  # try again after a heartbeat interval, not every batch

    def _beat(self, **fields) -> bool:
        """Refresh the heartbeat (and ``fields``); False when the database could not be reached."""
        try:
            held = self._mine().update(heartbeat_at=timezone.now(), **fields)
            cancel = self._cancel_requested() if held else False
        except DATABASE_UNAVAILABLE as exc:
            self._database_unavailable(exc)
            return False
        if not held:
            raise JobLost(f"job #{self.job_id} is no longer held by this worker")
        if self._outage_reported:
            self._trace("database reachable again")
            self._outage_reported = False
        self._last_beat = time.monotonic()
        self._cancel = cancel
        return True

    def _cancel_requested(self) -> bool:
        return TrainingJob.objects.filter(pk=self.job_id, cancel_requested=True).exists()

    def on_train_begin(self, *, total_epochs: int, resumed_from_epoch: int, device: str) -> None:
        self._trace(f"training from epoch {resumed_from_epoch + 1} of {total_epochs}")
        # The device is shown while the job runs, and kept if it fails.
        self._beat(total_epochs=total_epochs, current_epoch=resumed_from_epoch,
                   **({"device": device} if device else {}))
        if resumed_from_epoch:
            self.log(f"resuming after epoch {resumed_from_epoch}")

    def _beat_if_due(self, **fields) -> None:
        if time.monotonic() - self._last_beat >= HEARTBEAT_SECONDS:
            self._beat(**fields)

    def on_batch_end(self, *, epoch: int, batch: int, total_batches: int) -> None:
        # The epochs before the one in progress are done: once an ensemble member stops early,
        # the next member's batches move the job past the epochs the first left unused.
        self._beat_if_due(current_epoch=epoch - 1, batch_progress=batch / max(total_batches, 1))

    def on_epoch_end(self, *, epoch: int, total_epochs: int, metrics: dict) -> None:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                          if isinstance(v, float) and k != "seconds")
        line = f"epoch {epoch}/{total_epochs}: {shown}"
        self._trace(line)
        try:
            job = TrainingJob.objects.only("history").get(pk=self.job_id)
        except DATABASE_UNAVAILABLE as exc:
            self._database_unavailable(exc)
        else:
            history = [h for h in job.history if h.get("epoch") != epoch]
            if self._beat(current_epoch=epoch, batch_progress=0.0,
                          history=[*history, {"epoch": epoch, **metrics}]):
                self._append(line)
        if self.on_epoch:
            self.on_epoch(epoch, metrics)
        # Heartbeats are throttled, so a cancel could otherwise go unseen for a whole short
        # epoch; one query per epoch makes it take effect before the next one starts.
        try:
            self._cancel = self._cancel_requested()
        except DATABASE_UNAVAILABLE as exc:
            self._database_unavailable(exc)

    def should_stop(self) -> bool:
        self._beat_if_due()
        return self._cancel

    def alive(self) -> None:
        self._beat_if_due()

    def log(self, message: str) -> None:
        self._trace(message)
        self._append(message)

    def _append(self, message: str) -> None:
        try:
            _append_log(self.job_id, message)
        except DATABASE_UNAVAILABLE as exc:
            self._database_unavailable(exc)


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
    Retried through a brief database outage.
    """

    def finish() -> bool:
        with transaction.atomic():
            finished = bool(TrainingJob.objects.filter(pk=job_id, claim_token=token,
                                                       status=Status.RUNNING).update(
                finished_at=timezone.now(), **fields))
            if finished:
                _append_log(job_id, log)
        return finished

    return retry_through_outage(finish, what=f"job {job_id}: recording the outcome")


def job_error(exc: Exception) -> str:
    """What a job that ``exc`` ended shows as its error."""
    from celery.exceptions import SoftTimeLimitExceeded

    if isinstance(exc, SoftTimeLimitExceeded):
        return (f"stopped at the time limit of {settings.CELERY_TASK_SOFT_TIME_LIMIT} s that one "
                f"run of a job may take (CELERY_TASK_SOFT_TIME_LIMIT)")
    return f"{type(exc).__name__}: {exc}"


def _log_quietly(job_id: int, line: str) -> None:
    """A job log line that is not worth failing for: dropped (and logged here) during an outage."""
    try:
        _append_log(job_id, line)
    except DATABASE_UNAVAILABLE as exc:
        logger.warning("job %s: could not log %r (%s)", job_id, line, type(exc).__name__)
        reset_broken_connection()


def training_job_run(
    *, job_id: int, on_epoch: Callable[[int, dict], None] | None = None
) -> str:
    """Claim and train one job to a terminal state. Returns what happened, for logs.

    ``on_epoch(epoch, metrics)`` lets a caller in the same process follow progress. When the
    database is unreachable at the claim, or for longer than the retries last afterwards, the
    error is raised for the Celery task to retry; a job claimed meanwhile is then recovered by
    the sweep (its heartbeat stops) like the job of a worker that died.
    """
    from medml.config import TrainConfig
    from medml.fit import train

    token = training_job_claim(job_id=job_id)
    if token is None:
        return "skipped: finished, cancelled, or held by a live worker"
    hooks = _JobHooks(job_id, token, on_epoch)
    workdir = job_workdir(job_id)
    try:
        job = retry_through_outage(
            lambda: TrainingJob.objects.select_related("dataset", "owner").get(pk=job_id),
            what=f"job {job_id}: loading")
        if job.deliveries > 1:
            try:
                _remove_unregistered_artifacts(job_id)
            except Exception:  # tidying up must not fail the job
                logger.exception("job %s: could not look for unregistered artifacts", job_id)
                reset_broken_connection()
        config = TrainConfig.from_dict(job.config)
        data = catalog_selectors.dataset_arrays(dataset=job.dataset)
        hooks.log(f"training {config.architecture} on {job.dataset.name} "
                  f"({data.split_counts()['train']} training images)")
        result = train(config=config, data=data, workdir=workdir, hooks=hooks,
                       weights_dir=Path(settings.MEDML_WEIGHTS_DIR))
    except JobLost:
        return "lost the job to another worker"
    except DATABASE_UNAVAILABLE:
        raise  # not the job's fault: the task retries, or the sweep hands the job on
    except Exception as exc:
        logger.exception("training job %s failed", job_id)
        error = job_error(exc)
        if _finish(job_id, token, status=Status.FAILED, error=error, log=f"failed: {error}"):
            # A retry is a new job that starts afresh: nothing will resume from these.
            shutil.rmtree(workdir, ignore_errors=True)
        return "failed"
    retry_through_outage(
        lambda: TrainingJob.objects.filter(pk=job_id).update(device=result.device),
        what=f"job {job_id}: recording the device")
    if result.cancelled:
        outcome = "cancelled" if _finish(
            job_id, token, status=Status.CANCELLED,
            log=f"cancelled after epoch {result.epochs_completed}") else "lost"
    else:
        outcome = "succeeded" if _register_result(job, token, result) else "lost"
    # After a takeover the checkpoints belong to the worker resuming from them.
    if not retry_through_outage(
            lambda: TrainingJob.objects.filter(pk=job_id, status=Status.RUNNING).exists(),
            what=f"job {job_id}: checking for a takeover"):
        shutil.rmtree(workdir, ignore_errors=True)
    return "lost the job to another worker" if outcome == "lost" else outcome


def _remove_unregistered_artifacts(job_id: int) -> None:
    """Delete what an earlier run of this job stored and never registered.

    A run killed between storing the model artifact and committing its registration leaves the
    file behind. That run had finished training, so the file is a copy of the job's model (its
    best checkpoint, or an ensemble's averaged model, which a resumed run reuses as it is):
    stored copies of it that no model refers to are its leftovers. The earlier run cannot still
    be committing: this run's claim waited for its transaction's lock.
    """
    from medml import dataset_io
    from medml.fit import BEST_CHECKPOINT, ENSEMBLE_FILE

    workdir = job_workdir(job_id)
    model = next((workdir / name for name in (ENSEMBLE_FILE, BEST_CHECKPOINT)
                  if (workdir / name).exists()), None)
    if model is None:
        return
    prefix = dataset_io.sha256_of(model)[:16]
    try:
        _, files = default_storage.listdir("models")
    except FileNotFoundError:
        return
    candidates = {f"models/{name}" for name in files if name.startswith(prefix)}
    registered = set(ModelVersion.objects.filter(artifact__in=candidates)
                     .values_list("artifact", flat=True))
    for name in sorted(candidates - registered):
        logger.warning("job %s: deleting %s, stored by a run that died before registering it",
                       job_id, name)
        default_storage.delete(name)


class _CommitUncertain(OperationalError):
    """The database went away while committing: the registration may or may not be stored."""


def _register_once(job: TrainingJob, token: str, result, manifest: dict) -> ModelVersion | None:
    """One attempt at registering the model and ending the job, in one transaction.

    Returns None when this worker no longer holds a running job. An artifact stored by an
    attempt that was rolled back is deleted at once; when the commit itself failed, whether it
    went through is only known once the database answers again (``_CommitUncertain``).
    """
    stored = ""
    committing = False
    try:
        with transaction.atomic():
            locked = TrainingJob.objects.select_for_update().get(pk=job.pk)
            if (locked.model_version_id or locked.claim_token != token
                    or locked.status != Status.RUNNING):
                return None  # taken over, or finished meanwhile (e.g. by the sweep)
            model = catalog_services.model_version_register(
                name=f"{job.dataset.slug}-{job.config['architecture']}",
                architecture=job.config["architecture"], dataset=job.dataset, owner=job.owner,
                artifact_path=result.model_path, config=job.config,
                metrics=result.test_metrics or {}, val_metrics=result.val_metrics,
                history=result.history, num_params=result.num_params,
                train_seconds=result.train_seconds, manifest=manifest,
            )
            stored = model.artifact.name
            TrainingJob.objects.filter(pk=job.pk).update(
                status=Status.SUCCEEDED, model_version=model, finished_at=timezone.now(),
                manifest=manifest, history=result.history, current_epoch=result.epochs_completed,
                batch_progress=0.0,
            )
            # best_metric is None when the monitored value was never finite (a diverged run).
            best = "undefined" if result.best_metric is None else f"{result.best_metric:.4f}"
            chosen = (f"ensemble of {len(result.members)} members" if result.members
                      else f"best epoch {result.best_epoch}")
            _append_log(job.pk, f"registered {model}: {chosen}, {result.monitor} {best}")
            committing = True
    except DATABASE_UNAVAILABLE as exc:
        if stored and committing:
            raise _CommitUncertain(stored) from exc
        if stored:
            default_storage.delete(stored)
        raise
    except BaseException:
        if stored:
            default_storage.delete(stored)
        raise
    return model


def _register_result(job: TrainingJob, token: str, result) -> bool:
    """Record the best checkpoint as the job's one model, with the job's success, atomically.

    Returns False, registering nothing, when this worker no longer holds a running job. A
    database outage is waited out; the model row, the job's success and the stored artifact are
    written together or not at all.
    """
    manifest = _manifest(job, result.device)
    uncertain: list[str] = []  # artifacts of attempts whose commit may or may not have happened

    def attempt() -> ModelVersion | None:
        if uncertain:
            committed = ModelVersion.objects.filter(artifact__in=uncertain).first()
            for name in uncertain:
                if committed is None or name != committed.artifact.name:
                    default_storage.delete(name)
            uncertain.clear()
            if committed is not None:
                return committed  # the lost commit had gone through
        try:
            return _register_once(job, token, result, manifest)
        except _CommitUncertain as exc:
            uncertain.append(exc.args[0])
            raise

    model = retry_through_outage(attempt, what=f"job {job.pk}: registering the model")
    if model is None:
        return False
    # Replace the basic test metrics with the full report (calibration, ROC, intervals) and keep
    # the per-image test predictions that paired comparisons need. The model stays registered,
    # with the basic metrics, if this fails.
    try:
        registry_services.model_version_evaluate(model_version=model)
    except Exception as exc:
        logger.exception("evaluating %s failed", model)
        reset_broken_connection()
        _log_quietly(job.pk, f"full evaluation of {model} failed: {type(exc).__name__}: {exc}")
    return True


def _max_deliveries() -> int:
    return int(getattr(settings, "JOB_MAX_DELIVERIES", DEFAULT_MAX_DELIVERIES))


def _queued_grace() -> float:
    return float(getattr(settings, "JOB_QUEUED_GRACE", DEFAULT_QUEUED_GRACE))


def training_jobs_sweep(*, queued_grace: float | None = None) -> int:
    """Send again the jobs that would otherwise never run. Returns how many were sent.

    - Running jobs whose worker stopped sending heartbeats (it died): the next worker takes
      them over and resumes from the last checkpoint. Those whose cancel was requested are
      closed as cancelled instead.
    - Queued jobs older than ``queued_grace`` seconds (``JOB_QUEUED_GRACE``) whose message is
      not waiting in the broker: it was lost when the broker restarted without its data, or was
      never sent because the broker was down. Nothing is sent when the broker cannot be read.

    A job whose message is already waiting in the broker is not sent again, so a job whose
    workers stay away for an hour is not queued once per sweep meanwhile. The claim is atomic,
    so a job whose message turns out to be delivered twice still runs once.
    """
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    abandoned = []
    for job in TrainingJob.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale):
        if job.cancel_requested:
            with transaction.atomic():
                if TrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING,
                                              heartbeat_at=job.heartbeat_at).update(
                        status=Status.CANCELLED, finished_at=timezone.now()):
                    _append_log(job.pk, "cancelled (its worker had stopped)")
            continue
        abandoned.append(job.pk)
    grace = _queued_grace() if queued_grace is None else queued_grace
    waiting = list(TrainingJob.objects.filter(
        status=Status.QUEUED, created_at__lt=now - timedelta(seconds=grace)
    ).values_list("pk", flat=True))
    if not abandoned and not waiting:
        return 0
    from medplatform.celery import waiting_task_args
    from training.tasks import run_training_job

    in_broker = waiting_task_args(run_training_job.name)
    present = set() if in_broker is None else {args[0] for args in in_broker if args}
    # An abandoned job is sent even when the broker cannot be read: its claim keeps it single.
    requeued = [pk for pk in abandoned if pk not in present]
    if in_broker is None:
        if waiting:
            logger.warning("sweep: cannot read the broker; %d queued job(s) not checked",
                           len(waiting))
    else:
        for job_id in waiting:
            if job_id not in present:
                logger.warning("sweep: job %s is queued but its message is missing; sending it again",
                               job_id)
                requeued.append(job_id)
    for job_id in requeued:
        training_job_enqueue(job=TrainingJob(pk=job_id))
    return len(requeued)


__all__ = [
    "ACTIVE_STATUSES", "JobStateError", "training_job_cancel", "training_job_claim",
    "training_job_create", "training_job_delete", "training_job_retry", "training_job_run",
    "training_jobs_sweep", "validate_training_config",
]

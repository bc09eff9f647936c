"""Batch inference jobs: classify a dataset split or an uploaded file in a worker.

Input is validated when the job is created (a bad file is refused there and stores nothing);
the worker claims the job atomically, reads the images and predicts them in batches, reporting
progress through both phases, writes CSV and JSON results and, when the input is labelled, the
same evaluation report as for test sets. A job whose worker dies is started again from the
beginning, up to ``JOB_MAX_DELIVERIES`` runs; result files that a run stored but could not
record are removed by the next run, or with the job.
"""

from __future__ import annotations

import logging
import re
import socket
import time
import uuid
from datetime import timedelta
from typing import BinaryIO

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from classifier import selectors as catalog_selectors
from classifier import services as catalog_services
from classifier import services_predict
from classifier import services_registry as registry_services
from classifier.models import Dataset, ModelVersion
from medml import batch as medml_batch
from training import services
from training.models import InferenceJob

logger = logging.getLogger(__name__)

Status = InferenceJob.Status
Phase = InferenceJob.Phase
BATCH_SIZE = 256
# Longest time between two progress writes of a running job (its heartbeat goes with them).
PROGRESS_SECONDS = 1.0
RESULTS_DIR = "inference/results"
# How long recording a finished job's results keeps retrying through a database outage.
RESULTS_RETRY_SECONDS = services.DB_RETRY_SECONDS


class InferenceInputError(Exception):
    """A batch input refused before anything was stored; the message says why."""


def _read_input(*, model_version: ModelVersion, source: BinaryIO, filename: str,
                progress=None) -> medml_batch.BatchInput:
    dataset = model_version.dataset
    suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    if suffix == "npz":
        return medml_batch.read_npz(source, shape=dataset.image_shape,
                                    num_classes=dataset.num_classes,
                                    limits=catalog_services.import_limits(), progress=progress)
    if suffix == "zip":
        limits = catalog_services.import_limits()
        return medml_batch.read_zip(
            source, shape=dataset.image_shape, class_names=list(dataset.class_names),
            preprocessing=dataset.source_preprocessing, limits=limits,
            max_image_bytes=services_predict.prediction_limits()["max_bytes"], progress=progress,
            colour_training=catalog_selectors.dataset_input_stats(dataset=dataset).colour)
    raise medml_batch.BatchInputError(
        f"unsupported file type '{filename}': upload an .npz or a .zip of images")


def inference_job_create(
    *, owner, model_version: ModelVersion, dataset: Dataset | None = None, split: str = "",
    upload=None, idempotency_key: str = "",
) -> InferenceJob:
    """Check the input and queue a batch inference job for ``model_version``."""
    return inference_job_submit(owner=owner, model_version=model_version, dataset=dataset,
                                split=split, upload=upload, idempotency_key=idempotency_key)[0]


def inference_job_submit(
    *, owner, model_version: ModelVersion, dataset: Dataset | None = None, split: str = "",
    upload=None, idempotency_key: str = "",
) -> tuple[InferenceJob, bool]:
    """:func:`inference_job_create`, returning ``(job, created)``.

    With an ``idempotency_key``, a repeated request (even a concurrent one) returns the job the
    first one created, and stores nothing more.
    """
    if idempotency_key:
        existing = InferenceJob.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing:
            return existing, False
    if upload is None:
        if dataset is None or dataset.pk != model_version.dataset_id:
            raise InferenceInputError("choose a split of the model's own dataset, or upload a file")
        if split not in dataset.split_counts:
            raise InferenceInputError(f"unknown split '{split}'; choose one of "
                                      f"{', '.join(dataset.splits)}")
        fields = {"source": InferenceJob.Source.DATASET, "dataset": dataset, "split": split,
                  "total": dataset.split_counts[split]}
    else:
        try:
            batch = _read_input(model_version=model_version, source=upload, filename=upload.name)
        except medml_batch.BatchInputError as exc:
            raise InferenceInputError(f"{upload.name}: {exc}") from exc
        upload.seek(0)
        fields = {"source": InferenceJob.Source.UPLOAD, "input_name": upload.name[:255],
                  "total": len(batch)}
    stored = None
    if upload is not None:
        suffix = upload.name.lower().rsplit(".", 1)[-1]
        stored = default_storage.save(f"inference/inputs/{uuid.uuid4().hex}.{suffix}", upload)
    try:
        with transaction.atomic():
            job = InferenceJob.objects.create(owner=owner, model_version=model_version,
                                              input_file=stored or "",
                                              idempotency_key=idempotency_key, **fields)
            transaction.on_commit(lambda: inference_job_enqueue(job=job))
    except Exception as exc:
        if stored:
            default_storage.delete(stored)
        if idempotency_key and isinstance(exc, IntegrityError):
            return InferenceJob.objects.get(owner=owner, idempotency_key=idempotency_key), False
        raise
    return job, True


def inference_job_delete(*, job: InferenceJob) -> None:
    """Delete a batch job and, once that is committed, its uploaded input and results.

    A queued job is deleted before any worker runs it (its message then finds nothing to do);
    a running one stops at its next progress report, about every second, and removes whatever
    it had written. Result files that a run stored without recording them (the database went
    away at that moment) go too. Deleting a job that is already gone does nothing.
    """
    with transaction.atomic():
        locked = InferenceJob.objects.select_for_update().filter(pk=job.pk).first()
        if locked is None:
            return
        files = [f.name for f in (locked.input_file, locked.results_csv, locked.results_json) if f]
        # Only a job that is running, or whose run was cut short, can have unrecorded results.
        unrecorded = locked.is_active or locked.deliveries > 1

        def delete_files() -> None:
            for name in files:
                default_storage.delete(name)
            if unrecorded:
                _remove_unnamed_results(job.pk)

        locked.delete()
        transaction.on_commit(delete_files)
    logger.info("inference job %s deleted (%s)", job.pk, locked.status)


def _result_name(job_id: int, token: str, suffix: str) -> str:
    """Where a run stores a result file: a name of its own (its claim token), so that a run
    removing what it could not record never removes what another run of the job stored."""
    return f"{RESULTS_DIR}/job-{job_id}-{token[:8]}.{suffix}"


def _result_files(job_id: int) -> list[str]:
    """The stored result files of job ``job_id``: ``job-<id>-<run>.csv`` and ``.json``, the names
    of earlier versions (``job-<id>.csv``), and those the storage gives a file whose name was
    taken (``job-<id>_<random>.csv``)."""
    pattern = re.compile(rf"job-{job_id}(?:-[0-9a-f]+)?(?:_[A-Za-z0-9]+)?\.(?:csv|json)")
    try:
        _, files = default_storage.listdir(RESULTS_DIR)
    except FileNotFoundError:
        return []
    return sorted(f"{RESULTS_DIR}/{name}" for name in files if pattern.fullmatch(name))


def _remove_unnamed_results(job_id: int) -> None:
    """Delete the result files of job ``job_id`` that its row does not name.

    A run that stored its results and then lost the database while recording them leaves them
    behind (whether the record was committed is not known at that moment), and the next run
    writes new ones. Called once no earlier run can record them any more: after this run's claim
    (which changed the token an earlier run's final update requires), or once the job is gone.
    """
    named = InferenceJob.objects.filter(pk=job_id).values_list("results_csv",
                                                               "results_json").first() or ()
    for name in _result_files(job_id):
        if name not in named:
            logger.warning("inference job %s: deleting %s, stored by a run that could not record "
                           "it", job_id, name)
            default_storage.delete(name)


def inference_job_enqueue(*, job: InferenceJob) -> None:
    from training.tasks import run_inference_job

    run_inference_job.apply_async(args=[job.pk])


def _claim(job_id: int) -> str | None:
    """Take the job for this run; returns a claim token, or None when there is nothing to run.

    A queued job is claimed outright; a running one whose heartbeat is older than
    ``JOB_HEARTBEAT_TIMEOUT`` (its worker died) is taken over and starts again from the
    beginning, unless its workers died in each of its last ``JOB_MAX_DELIVERIES`` runs: it is
    then failed, saying so.
    """
    token = uuid.uuid4().hex
    now = timezone.now()
    run = {"claim_token": token, "heartbeat_at": now, "worker_host": socket.gethostname(),
           "deliveries": F("deliveries") + 1, "phase": Phase.READING, "read": 0, "done": 0}
    claimed = InferenceJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING, started_at=now, **run)
    if claimed:
        return token
    if _fail_if_out_of_runs(job_id):
        return None
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    if InferenceJob.objects.filter(pk=job_id, status=Status.RUNNING,
                                   heartbeat_at__lt=stale).update(**run):
        logger.info("inference job %s: its worker stopped; starting it again", job_id)
        return token  # batch inference simply starts over
    return None


def _fail_if_out_of_runs(job_id: int) -> bool:
    """Fail a running job whose worker is silent and whose workers died in each of its last
    ``JOB_MAX_DELIVERIES`` runs (out of memory on a large input, say): delivering it again
    would only take another worker down. Returns whether it was failed."""
    runs = services._max_deliveries()
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    error = (f"its worker stopped during each of its {runs} runs (killed, out of memory, or its "
             f"node went away); it was not started again")
    if not InferenceJob.objects.filter(pk=job_id, status=Status.RUNNING, heartbeat_at__lt=stale,
                                       deliveries__gte=runs).update(
            status=Status.FAILED, finished_at=now, error=error):
        return False
    logger.warning("inference job %s: %s", job_id, error)
    try:
        _remove_unnamed_results(job_id)  # what the dead runs stored, if they got that far
    except Exception:  # tidying up must not keep the job from failing
        logger.exception("inference job %s: could not look for unrecorded results", job_id)
        services.reset_broken_connection()
    return True


class _JobLost(Exception):
    """This run no longer holds the job: it was deleted, or another worker took it over."""


def inference_job_run(*, job_id: int) -> str:
    """Claim and run one batch inference job to a terminal state."""
    token = _claim(job_id)
    if token is None:
        return "skipped: finished, out of runs, or held by a live worker"
    job = InferenceJob.objects.select_related("model_version__dataset").filter(pk=job_id).first()
    if job is None:  # deleted since the claim
        return "lost the job"
    mine = InferenceJob.objects.filter(pk=job_id, claim_token=token, status=Status.RUNNING)

    def beat(**fields) -> None:
        if not mine.update(heartbeat_at=timezone.now(), **fields):
            raise _JobLost(f"inference job {job_id} is no longer held by this run")

    if job.deliveries > 1:
        try:
            _remove_unnamed_results(job_id)
        except Exception:  # tidying up must not fail the job
            logger.exception("inference job %s: could not look for unrecorded results", job_id)
            services.reset_broken_connection()

    started = time.perf_counter()
    stored: list[str] = []  # result files this run stored and has not recorded
    try:
        from medml.infer import TTA_VIEWS, answer_warnings  # TensorFlow: workers only

        model = job.model_version
        class_names = list(model.dataset.class_names)
        if job.source == InferenceJob.Source.DATASET:
            arrays = catalog_selectors.dataset_arrays(dataset=job.dataset)
            batch = medml_batch.BatchInput(
                images=arrays.images(job.split), labels=arrays.labels(job.split),
                names=[f"{job.split}[{i}]" for i in range(len(arrays.labels(job.split)))])
        else:
            last_report = time.monotonic()

            def reading(read: int, total: int) -> None:  # decoding a big zip takes a while
                nonlocal last_report
                if time.monotonic() - last_report >= PROGRESS_SECONDS:
                    beat(read=read)
                    last_report = time.monotonic()

            with job.input_file.open("rb") as fh:
                batch = _read_input(model_version=model, source=fh, filename=job.input_name,
                                    progress=reading)
        beat(phase=Phase.PREDICTING, read=len(batch))
        # A batch job has the worker to itself: every core (0) for one ONNX Runtime call.
        predictor = services_predict.predictor_for(model, threads=0)
        # A model evaluated with test-time augmentation is served the same way.
        tta = model.uses_tta
        threshold = model.decision_threshold
        probs = np.empty((len(batch), len(class_names)), dtype=np.float32)
        view_predictions = np.empty((len(TTA_VIEWS), len(batch)), dtype=np.int64) if tta else None
        last_beat = time.monotonic()
        for start in range(0, len(batch), BATCH_SIZE):
            stop = min(start + BATCH_SIZE, len(batch))
            images = batch.images[start:stop]
            if tta:
                result = predictor.predict_tta(images)
                probs[start:stop] = result.probabilities
                for v, view in enumerate(result.views):
                    view_predictions[v, start:stop] = services_predict.predicted_indices(
                        view, threshold)
            else:
                probs[start:stop] = predictor.predict(images)
            if time.monotonic() - last_beat >= PROGRESS_SECONDS or stop == len(batch):
                beat(done=stop)
                last_beat = time.monotonic()
        beat(phase=Phase.WRITING)
        predicted = services_predict.predicted_indices(probs, threshold)
        # The single-image answers' warnings about the answer itself, in the rows of the JSON.
        for i, notes in answer_warnings(probs, predicted, class_names,
                                        min_confidence=services_predict.low_confidence(),
                                        view_predictions=view_predictions).items():
            batch.warnings.setdefault(batch.names[i], []).extend(notes)
        csv_bytes, json_bytes = medml_batch.write_results(batch, probs, predicted, class_names)
        report = {}
        if batch.labels is not None:
            # The registry's report: for two classes it applies the model's decision threshold,
            # as the predictions above do, so the report describes the rows of the CSV.
            report = registry_services._report(model, batch.labels, probs)
        counts = np.bincount(predicted, minlength=len(class_names))
        summary = {name: int(n) for name, n in zip(class_names, counts, strict=True)}
        for suffix, data in (("csv", csv_bytes), ("json", json_bytes)):
            stored.append(default_storage.save(_result_name(job_id, token, suffix),
                                               ContentFile(data)))
        csv_name, json_name = stored
        outcome = {"status": Status.SUCCEEDED, "phase": "", "finished_at": timezone.now(),
                   "results_csv": csv_name, "results_json": json_name, "summary": summary,
                   "report": report, "read": len(batch), "done": len(batch),
                   "seconds": time.perf_counter() - started}
        # Through a brief outage: the update is conditional, so repeating it is safe. When the
        # database stays away, the files stay too (the last attempt may have been committed):
        # the next run of the job, or its deletion, removes them if the row does not name them.
        recorded = services.retry_through_outage(
            lambda: mine.update(**outcome), what=f"inference job {job_id}: recording the results",
            seconds=RESULTS_RETRY_SECONDS)
        stored = []
        if not recorded:
            # Deleted or taken over meanwhile; or an attempt cut off by the outage had in fact
            # been committed, and the row names these files.
            if InferenceJob.objects.filter(pk=job_id, claim_token=token, status=Status.SUCCEEDED,
                                           results_csv=csv_name).exists():
                return "succeeded"
            for name in (csv_name, json_name):
                default_storage.delete(name)
            return "lost the job"
    except _JobLost:
        return "lost the job"  # deleted meanwhile, or taken over by another worker
    except services.DATABASE_UNAVAILABLE:
        raise  # not the job's fault: the task retries, or the sweep hands the job on
    except Exception as exc:
        for name in stored:  # the failed job does not name them
            default_storage.delete(name)
        if not mine.update(status=Status.FAILED, finished_at=timezone.now(),
                           error=services.job_error(exc)):
            return "lost the job"  # e.g. its input went with the job, deleted meanwhile
        logger.exception("inference job %s failed", job_id)
        return "failed"
    return "succeeded"


def inference_jobs_sweep(*, queued_grace: float | None = None) -> int:
    """Queue again the running jobs whose worker stopped sending heartbeats, and the queued jobs
    whose message went missing from the broker (as ``training_jobs_sweep`` does). A job whose
    message is already waiting in the broker is not sent again. A job whose workers died in each
    of its last ``JOB_MAX_DELIVERIES`` runs is failed here instead of being sent again."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    abandoned = [pk for pk in InferenceJob.objects.filter(status=Status.RUNNING,
                                                          heartbeat_at__lt=stale)
                 .values_list("pk", flat=True) if not _fail_if_out_of_runs(pk)]
    grace = services._queued_grace() if queued_grace is None else queued_grace
    waiting = list(InferenceJob.objects.filter(
        status=Status.QUEUED, created_at__lt=now - timedelta(seconds=grace)
    ).values_list("pk", flat=True))
    if not abandoned and not waiting:
        return 0
    from medplatform.celery import waiting_task_args
    from training.tasks import run_inference_job

    in_broker = waiting_task_args(run_inference_job.name)
    present = set() if in_broker is None else {args[0] for args in in_broker if args}
    # An abandoned job is sent even when the broker cannot be read: its claim keeps it single.
    requeued = [pk for pk in abandoned if pk not in present]
    if in_broker is not None:
        for job_id in waiting:
            if job_id not in present:
                logger.warning("sweep: inference job %s is queued but its message is missing; "
                               "sending it again", job_id)
                requeued.append(job_id)
    for job_id in requeued:
        inference_job_enqueue(job=InferenceJob(pk=job_id))
    return len(requeued)

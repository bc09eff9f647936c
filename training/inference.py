"""Batch inference jobs: classify a dataset split or an uploaded file in a worker.

Input is validated when the job is created (a bad file is refused there and stores nothing);
the worker claims the job atomically, predicts in batches with progress, writes CSV and JSON
results and, when the input is labelled, the same evaluation report as for test sets.
"""

from __future__ import annotations

import logging
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
BATCH_SIZE = 256


class InferenceInputError(Exception):
    """A batch input refused before anything was stored; the message says why."""


def _read_input(*, model_version: ModelVersion, source: BinaryIO, filename: str,
                progress=None) -> medml_batch.BatchInput:
    dataset = model_version.dataset
    suffix = filename.lower().rsplit(".", 1)[-1] if "." in filename else ""
    if suffix == "npz":
        return medml_batch.read_npz(source, shape=dataset.image_shape,
                                    num_classes=dataset.num_classes,
                                    limits=catalog_services.import_limits())
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


class InferenceJobStateError(Exception):
    """The job cannot do that in its current state."""


def inference_job_delete(*, job: InferenceJob) -> None:
    """Delete a batch job and, once that is committed, its uploaded input and results.

    A queued job is deleted before any worker runs it (its message then finds nothing to do);
    a running one stops at its next progress report, about every second, and removes whatever
    it had written. Deleting a job that is already gone does nothing.
    """
    with transaction.atomic():
        locked = InferenceJob.objects.select_for_update().filter(pk=job.pk).first()
        if locked is None:
            return
        files = [f.name for f in (locked.input_file, locked.results_csv, locked.results_json) if f]
        locked.delete()
        transaction.on_commit(lambda: [default_storage.delete(name) for name in files])
    logger.info("inference job %s deleted (%s)", job.pk, locked.status)


def inference_job_enqueue(*, job: InferenceJob) -> None:
    from training.tasks import run_inference_job

    run_inference_job.apply_async(args=[job.pk])


def _claim(job_id: int) -> str | None:
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = InferenceJob.objects.filter(pk=job_id, status=Status.QUEUED).update(
        status=Status.RUNNING, claim_token=token, heartbeat_at=now, started_at=now,
        worker_host=socket.gethostname())
    if claimed:
        return token
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    if InferenceJob.objects.filter(pk=job_id, status=Status.RUNNING,
                                   heartbeat_at__lt=stale).update(claim_token=token,
                                                                  heartbeat_at=now):
        return token  # its worker died; batch inference simply starts over
    return None


class _JobLost(Exception):
    """This run no longer holds the job: it was deleted, or another worker took it over."""


def inference_job_run(*, job_id: int) -> str:
    """Claim and run one batch inference job to a terminal state."""
    token = _claim(job_id)
    if token is None:
        return "skipped: finished or held by a live worker"
    job = InferenceJob.objects.select_related("model_version__dataset").filter(pk=job_id).first()
    if job is None:  # deleted since the claim
        return "lost the job"
    mine = InferenceJob.objects.filter(pk=job_id, claim_token=token, status=Status.RUNNING)

    def beat(**fields) -> None:
        if not mine.update(heartbeat_at=timezone.now(), **fields):
            raise _JobLost(f"inference job {job_id} is no longer held by this run")

    started = time.perf_counter()
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
            def reading(done: int, total: int) -> None:  # decoding a big zip takes a while
                beat()

            with job.input_file.open("rb") as fh:
                batch = _read_input(model_version=model, source=fh, filename=job.input_name,
                                    progress=reading)
        # A batch job has the worker to itself: every core (0) for one ONNX Runtime call.
        predictor = services_predict.predictor_for(model, threads=0)
        # A model evaluated with test-time augmentation is served the same way.
        tta = model.uses_tta
        threshold = model.decision_threshold
        probs = np.empty((len(batch), len(class_names)), dtype=np.float32)
        view_predictions = np.empty((len(TTA_VIEWS), len(batch)), dtype=np.int64) if tta else None
        last_beat = 0.0
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
            if time.monotonic() - last_beat > 1.0 or stop == len(batch):
                beat(done=stop)
                last_beat = time.monotonic()
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
        csv_name = default_storage.save(f"inference/results/job-{job_id}.csv",
                                        ContentFile(csv_bytes))
        json_name = default_storage.save(f"inference/results/job-{job_id}.json",
                                         ContentFile(json_bytes))
        if not mine.update(status=Status.SUCCEEDED, finished_at=timezone.now(),
                           results_csv=csv_name, results_json=json_name, summary=summary,
                           report=report, done=len(batch),
                           seconds=time.perf_counter() - started):
            default_storage.delete(csv_name)
            default_storage.delete(json_name)
            return "lost the job"
    except _JobLost:
        return "lost the job"  # deleted meanwhile, or taken over by another worker
    except services.DATABASE_UNAVAILABLE:
        raise  # not the job's fault: the task retries, or the sweep hands the job on
    except Exception as exc:
        if not mine.update(status=Status.FAILED, finished_at=timezone.now(),
                           error=services.job_error(exc)):
            return "lost the job"  # e.g. its input went with the job, deleted meanwhile
        logger.exception("inference job %s failed", job_id)
        return "failed"
    return "succeeded"


def inference_jobs_sweep(*, queued_grace: float | None = None) -> int:
    """Queue again the running jobs whose worker stopped sending heartbeats, and the queued jobs
    whose message went missing from the broker (as ``training_jobs_sweep`` does). A job whose
    message is already waiting in the broker is not sent again."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.JOB_HEARTBEAT_TIMEOUT)
    abandoned = list(InferenceJob.objects.filter(status=Status.RUNNING, heartbeat_at__lt=stale)
                     .values_list("pk", flat=True))
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

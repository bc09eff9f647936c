"""Classifying uploaded images with a registered model: validate everything, predict, store.

A request either stores every prediction or nothing: all files are read, decoded and converted
to the model's input first, and the first bad one rejects the whole request before a file is
written or a row created. The model is loaded through ``services.model_artifact_local_path``, so
an artifact whose bytes changed since registration is refused; once loaded, a model stays in
memory keyed by its sha256 and later requests skip the disk.

TensorFlow is imported on first use, not at import time, so processes that never classify (the
worker launcher, management commands) do not pay for it.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction

from classifier import selectors, services
from classifier.models import ModelVersion, Prediction, visible_to
from medml import images as medml_images

if TYPE_CHECKING:
    from medml.explain import GradCam
    from medml.infer import Predictor

logger = logging.getLogger(__name__)

DEFAULT_MAX_FILES = 16
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4096 * 4096
_READ_CHUNK = 1024 * 1024


class PredictionInputError(Exception):
    """A request that stored nothing; ``messages`` say why, one per problem, for the user."""

    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = list(messages)


class ModelUnavailableError(Exception):
    """A model that cannot serve: its artifact does not match what its dataset needs."""


def prediction_limits() -> dict[str, int]:
    """Upload limits: files per request, bytes per file, pixels per image (settings, or defaults)."""
    return {
        "max_files": int(getattr(settings, "PREDICTION_MAX_FILES", DEFAULT_MAX_FILES)),
        "max_bytes": int(getattr(settings, "PREDICTION_MAX_BYTES", DEFAULT_MAX_BYTES)),
        "max_pixels": int(getattr(settings, "PREDICTION_MAX_PIXELS", DEFAULT_MAX_PIXELS)),
    }


def low_confidence() -> float:
    """Answers whose predicted class has a lower probability carry a warning (settings, or
    :data:`medml.infer.LOW_CONFIDENCE`)."""
    from medml import infer

    return float(getattr(settings, "PREDICTION_LOW_CONFIDENCE", infer.LOW_CONFIDENCE))


def model_cache_dir() -> Path:
    """Where verified local copies of model artifacts are kept."""
    configured = getattr(settings, "MODEL_CACHE_DIR", None)
    return Path(configured) if configured else Path(settings.VAR_DIR) / "model-cache"


@dataclass
class _CheckedImage:
    name: str
    data: bytes
    sha256: str
    image_format: str
    array: np.ndarray
    warnings: list[str]


def _read_upload(upload: UploadedFile, max_bytes: int) -> bytes:
    upload.seek(0)
    chunks, total = [], 0
    for chunk in upload.chunks(_READ_CHUNK):
        total += len(chunk)
        if total > max_bytes:  # the declared size can lie; the bytes read cannot
            raise medml_images.ImageInputError(f"the file is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _display_name(upload: UploadedFile, index: int) -> str:
    # Only the last path component, and never used for storage: it is shown, not trusted.
    name = PurePath(str(upload.name or "").replace("\\", "/")).name
    return name[:255] or f"image {index + 1}"


def _check_uploads(files: list[UploadedFile], model_version: ModelVersion, *,
                   colour_training: bool) -> list[_CheckedImage]:
    limits = prediction_limits()
    if not files:
        raise PredictionInputError(["no image was uploaded"])
    if len(files) > limits["max_files"]:
        raise PredictionInputError(
            [f"{len(files)} images were uploaded; at most {limits['max_files']} are accepted at once"]
        )
    dataset = model_version.dataset
    checked, errors = [], []
    for index, upload in enumerate(files):
        name = _display_name(upload, index)
        try:
            if upload.size is not None and upload.size > limits["max_bytes"]:
                raise medml_images.ImageInputError(
                    f"the file has {upload.size} bytes; the limit is {limits['max_bytes']}"
                )
            data = _read_upload(upload, limits["max_bytes"])
            image = medml_images.decode_upload(
                data, max_pixels=limits["max_pixels"], max_bytes=limits["max_bytes"]
            )
            image_format = image.format
            try:
                array, notes = medml_images.to_model_input(
                    image, height=dataset.image_height, width=dataset.image_width,
                    channels=dataset.channels, preprocessing=dataset.source_preprocessing,
                    colour_training=colour_training,
                )
            finally:
                image.close()
        except medml_images.ImageInputError as exc:
            errors.append(f"{name}: {exc}")
            continue
        checked.append(_CheckedImage(
            name=name, data=data, sha256=hashlib.sha256(data).hexdigest(),
            image_format=image_format, array=array, warnings=notes,
        ))
    if errors:
        raise PredictionInputError(errors)
    return checked


def predictor_for(model_version: ModelVersion, *, threads: int | None = None) -> Predictor:
    """The loaded model of ``model_version``, verified against its sha256 when first loaded.

    ``threads`` sizes the ONNX Runtime session (default ``settings.PREDICTION_THREADS``, for
    requests); batch jobs ask for every core with 0.

    Raises:
        services.ArtifactIntegrityError: when the stored artifact was changed after registration.
        ModelUnavailableError: when the model does not take the dataset's images.
    """
    from medml import infer

    if threads is None:
        threads = int(getattr(settings, "PREDICTION_THREADS", 1))
    predictor = infer.cached_predictor(model_version.sha256, threads=threads)
    if predictor is None:
        try:
            path = services.model_artifact_local_path(
                model_version=model_version, cache_dir=model_cache_dir()
            )
        except FileNotFoundError as exc:
            raise ModelUnavailableError(f"the artifact of {model_version} is missing from storage") from exc
        try:
            predictor = infer.get_predictor(path, model_version.sha256, threads=threads)
        except (ValueError, OSError) as exc:
            raise ModelUnavailableError(f"{model_version} cannot be loaded: {exc}") from exc
    dataset = model_version.dataset
    if predictor.input_shape != dataset.image_shape or predictor.num_classes != dataset.num_classes:
        raise ModelUnavailableError(
            f"{model_version} takes {predictor.input_shape} images with {predictor.num_classes} "
            f"classes, but its dataset {dataset.name} has {dataset.image_shape} images with "
            f"{dataset.num_classes} classes"
        )
    return predictor


def predicted_index(probabilities: np.ndarray, threshold: float | None) -> int:
    # A tuned threshold of a two-class model applies to class 1, as in evaluation.
    if threshold is not None and len(probabilities) == 2:
        return int(probabilities[1] >= threshold)
    return int(np.argmax(probabilities))


def predicted_indices(probabilities: np.ndarray, threshold: float | None) -> np.ndarray:
    """:func:`predicted_index` of every row of ``(N, num_classes)`` probabilities at once."""
    probabilities = np.asarray(probabilities)
    if threshold is not None and probabilities.shape[1] == 2:
        return (probabilities[:, 1] >= threshold).astype(np.int64)
    return probabilities.argmax(axis=1)


def _explainer_for(predictor: Predictor) -> GradCam | None:
    try:
        return predictor.explainer
    except ValueError as exc:  # a model with no convolution has nothing to show
        logger.warning("no Grad-CAM for this model: %s", exc)
        return None


def _gradcam_pngs(explainer: GradCam | None, arrays: np.ndarray, classes: list[int]) -> list[bytes | None]:
    from medml import explain

    if explainer is None:
        return [None] * len(arrays)
    heatmaps = explainer.heatmaps(arrays, classes)
    return [explain.overlay_png(array, heatmap) for array, heatmap in zip(arrays, heatmaps, strict=True)]


def prediction_create(
    *, user, model_version: ModelVersion, files: list[UploadedFile], tta: bool = False,
    explain: bool = True,
) -> list[Prediction]:
    """Classify uploaded images with one model and record each prediction.

    Every file is checked first (count, size, format, decoding); if any is bad nothing is stored.
    The images are then classified in one batch, and each is stored under ``uploads/`` with its
    sha256, class probabilities, predicted class, warnings and the time taken. Each returned
    prediction carries ``gradcam_png``: PNG bytes of its Grad-CAM overlay for the predicted class
    (not stored), or ``None``.

    Args:
        user: The owner of the predictions; must be allowed to see ``model_version``.
        model_version: The registered model to use.
        files: The uploaded image files, in the order the results are returned.
        tta: Average over the image and its mirror images and record their spread as
            ``uncertainty``; always on for a model trained with it (``uses_tta``).
        explain: Compute the Grad-CAM overlays (``gradcam_png`` is ``None`` without).

    Raises:
        PredictionInputError: for bad files or a model the user may not use; nothing stored.
        services.ArtifactIntegrityError: when the model's artifact was tampered with.
        ModelUnavailableError: when the model cannot serve its dataset's images.
    """
    if not visible_to(model_version, user):
        raise PredictionInputError([f"model {model_version.pk} does not exist or is not visible to you"])
    from medml.infer import answer_warnings

    # One-off per process, as the model below: loading the training statistics is not latency.
    stats = selectors.dataset_input_stats(dataset=model_version.dataset)
    started = time.perf_counter()
    checked = _check_uploads(files, model_version, colour_training=stats.colour)
    checking_seconds = time.perf_counter() - started

    predictor = predictor_for(model_version)
    explainer = _explainer_for(predictor) if explain else None

    started = time.perf_counter()
    arrays = np.stack([item.array for item in checked])
    threshold = model_version.decision_threshold
    view_predictions = None
    if tta or model_version.uses_tta:
        result = predictor.predict_tta(arrays)
        probabilities, spreads = result.probabilities, result.spread.tolist()
        view_predictions = np.stack([predicted_indices(view, threshold) for view in result.views])
    else:
        probabilities, spreads = predictor.predict(arrays), [None] * len(checked)
    predicted = [predicted_index(row, threshold) for row in probabilities]
    overlays = _gradcam_pngs(explainer, arrays, predicted)
    class_names = list(model_version.dataset.class_names)
    unusual = stats.warnings(arrays)
    about_answers = answer_warnings(probabilities, np.array(predicted), class_names,
                                          min_confidence=low_confidence(),
                                          view_predictions=view_predictions)
    latency_ms = 1000 * (checking_seconds + time.perf_counter() - started)

    stored: list[str] = []
    predictions: list[Prediction] = []
    try:
        with transaction.atomic():
            for i, (item, row, index, spread, extra, overlay_png) in enumerate(zip(
                checked, probabilities, predicted, spreads, unusual, overlays, strict=True
            )):
                extension = medml_images.FORMAT_EXTENSIONS[item.image_format]
                stored_name = default_storage.save(
                    f"uploads/{uuid.uuid4().hex}{extension}", ContentFile(item.data)
                )
                stored.append(stored_name)
                prediction = Prediction.objects.create(
                    owner=user,
                    model_version=model_version,
                    image=stored_name,
                    image_content_type=medml_images.FORMAT_CONTENT_TYPES[item.image_format],
                    image_sha256=item.sha256,
                    original_name=item.name,
                    predicted_index=index,
                    predicted_label=class_names[index],
                    probabilities={name: float(p) for name, p in zip(class_names, row, strict=True)},
                    warnings=item.warnings + extra + about_answers.get(i, []),
                    latency_ms=round(latency_ms, 3),
                    uncertainty=spread,
                )
                prediction.gradcam_png = overlay_png
                predictions.append(prediction)
    except Exception:
        for name in stored:  # no orphan files when the rows could not be written
            default_storage.delete(name)
        raise
    return predictions


def prediction_preview(data: bytes) -> bytes:
    """A small PNG of a stored prediction image (see :func:`medml.images.preview_png`)."""
    image = medml_images.decode_upload(data, max_pixels=settings.PREDICTION_MAX_PIXELS,
                                       max_bytes=settings.PREDICTION_MAX_BYTES)
    with image:
        return medml_images.preview_png(image)


def prediction_delete(*, prediction: Prediction) -> None:
    """Delete a prediction and, once that is committed, its stored image."""
    file_name = prediction.image.name
    with transaction.atomic():
        prediction.delete()
        transaction.on_commit(lambda: default_storage.delete(file_name))

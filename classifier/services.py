"""Writes to the catalog. Views, API, admin, commands and tasks call these; nothing else writes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError
from django.utils.text import slugify

from classifier.models import Dataset, ModelVersion, Visibility
from medml import dataset_io
from medml.data import DatasetArrays

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

# How the MedMNIST v2 paper says each 2D dataset's source images became its arrays. Uploads at a
# larger size go through the same path before classification.
MEDMNIST_PREPROCESSING = {
    "bloodmnist": {"crop": "center 200x200 of the 360x363 source", "resize": "bilinear",
                   "channels": 3, "modality": "Blood cell microscopy"},
    "breastmnist": {"crop": "none (full frame)", "resize": "bilinear", "channels": 1,
                    "modality": "Breast ultrasound"},
    "pathmnist": {"crop": "none", "resize": "bilinear", "channels": 3, "modality": "Colon pathology"},
    "chestmnist": {"crop": "none", "resize": "bilinear", "channels": 1, "modality": "Chest X-ray"},
    "dermamnist": {"crop": "none", "resize": "bilinear", "channels": 3,
                   "modality": "Dermatoscope"},
    "octmnist": {"crop": "center square", "resize": "bilinear", "channels": 1,
                 "modality": "Retinal OCT"},
    "pneumoniamnist": {"crop": "center square", "resize": "bilinear", "channels": 1,
                       "modality": "Chest X-ray"},
    "retinamnist": {"crop": "center square", "resize": "bilinear", "channels": 3,
                    "modality": "Fundus camera"},
    "tissuemnist": {"crop": "none", "resize": "bilinear", "channels": 1,
                    "modality": "Kidney cortex microscopy"},
    "organamnist": {"crop": "none", "resize": "bilinear", "channels": 1, "modality": "Abdominal CT"},
    "organcmnist": {"crop": "none", "resize": "bilinear", "channels": 1, "modality": "Abdominal CT"},
    "organsmnist": {"crop": "none", "resize": "bilinear", "channels": 1, "modality": "Abdominal CT"},
}


class DatasetImportError(Exception):
    """An import that stored nothing; the message says why, for the user."""


def import_limits() -> dataset_io.ImportLimits:
    return dataset_io.ImportLimits(
        max_members=settings.DATASET_IMPORT_MAX_MEMBERS,
        max_total_bytes=settings.DATASET_IMPORT_MAX_TOTAL_BYTES,
    )


def _unique_slug(name: str) -> str:
    base = slugify(name)[:120] or "dataset"
    slug, n = base, 1
    while Dataset.objects.filter(slug=slug).exists():
        n += 1
        slug = f"{base}-{n}"
    return slug


def _task_for(arrays: DatasetArrays) -> str:
    return Dataset.Task.BINARY if arrays.num_classes == 2 else Dataset.Task.MULTI_CLASS


def _read_arrays(
    source: BinaryIO, *, filename: str, class_names: list[str] | None, seed: int,
    image_size: int | None, progress: Progress | None,
) -> tuple[DatasetArrays, dict | None]:
    """Parse an upload; returns the arrays and, for official MedMNIST files, their metadata."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".npz":
        if image_size is not None:
            raise dataset_io.DatasetFormatError(
                "image_size resizes the images of a .zip; a .npz is stored at the size of its "
                "arrays, so leave it out")
        # Official only by name *and* published MD5; a file merely named like one is an ordinary
        # upload (generic class names unless given, no MedMNIST licence or preprocessing).
        info = dataset_io.official_medmnist_info(Path(filename).name, source)
        names = class_names or (info["class_names"] if info else None)
        arrays = dataset_io.load_medmnist_npz(source, class_names=names, limits=import_limits())
        if not arrays.extra.get("official_keys_only"):
            info = None  # rewritten before storing, so the stored bytes are not the checked ones
        if class_names:  # as for a zip: each name given must be a class the images have
            present = set(arrays.labels("train").tolist())
            unused = [name for i, name in enumerate(arrays.class_names) if i not in present]
            if unused:
                raise dataset_io.DatasetFormatError(
                    f"{len(class_names)} class names were given but the training labels have "
                    f"no image of {', '.join(unused)}")
        return arrays, info
    if suffix == ".zip":
        arrays = dataset_io.load_image_folder_zip(
            source, limits=import_limits(), seed=seed, image_size=image_size, progress=progress
        )
        if class_names and len(class_names) != arrays.num_classes:
            raise dataset_io.DatasetFormatError(
                f"{len(class_names)} class names were given but the archive has "
                f"{arrays.num_classes} class folders"
            )
        if class_names:
            arrays.class_names = list(class_names)
        return arrays, None
    raise dataset_io.DatasetFormatError(
        f"unsupported file type '{suffix or filename}': upload a MedMNIST-style .npz or a .zip "
        "of class-named image folders"
    )


def _create_dataset_row(*, name: str, **fields) -> Dataset:
    """Insert the row under a free slug; another import may take the chosen one meanwhile."""
    for _ in range(5):
        slug = _unique_slug(name)
        try:
            with transaction.atomic():
                return Dataset.objects.create(name=name[:120], slug=slug, **fields)
        except IntegrityError:
            if not Dataset.objects.filter(slug=slug).exists():
                raise  # another constraint (a built-in imported concurrently)
    raise DatasetImportError(f"could not find a free slug for '{name}'; try again")


def dataset_import(
    *,
    source: BinaryIO,
    filename: str,
    owner,
    name: str = "",
    description: str = "",
    visibility: str = Visibility.PRIVATE,
    class_names: list[str] | None = None,
    seed: int = 0,
    image_size: int | None = None,
    builtin: bool = False,
    source_preprocessing: dict | None = None,
    progress: Progress | None = None,
) -> Dataset:
    """Validate an uploaded dataset file, store it in the platform format and record it.

    Accepts the official MedMNIST ``.npz`` layout or a ``.zip`` of class-named image folders.
    Raises ``DatasetImportError`` with a reason and stores nothing when the input is bad.
    """
    try:
        arrays, info = _read_arrays(
            source, filename=filename, class_names=class_names, seed=seed,
            image_size=image_size, progress=progress,
        )
        # Official files with nothing extra are kept byte for byte, so their sha256 matches the
        # published one; anything else is rewritten in the official layout (which checks the
        # class names given for a zip once more).
        if arrays.extra.get("official_keys_only"):
            source.seek(0)
            payload: BinaryIO = source
        else:
            payload = io.BytesIO()
            dataset_io.save_dataset_npz(arrays, payload)
            payload.seek(0)
    except dataset_io.DatasetFormatError as exc:
        raise DatasetImportError(f"{filename}: {exc}") from exc
    digest = dataset_io.sha256_of(payload)
    payload.seek(0, io.SEEK_END)
    size_bytes = payload.tell()
    payload.seek(0)

    flag = info["flag"] if info else ""
    preprocessing = source_preprocessing or MEDMNIST_PREPROCESSING.get(flag, {})
    display_name = name or Path(filename).stem
    stored_name = default_storage.save(f"datasets/{digest[:16]}.npz", File(payload))
    try:
        return _create_dataset_row(
            name=display_name,
            description=description or (info["description"] if info else ""),
            modality=preprocessing.get("modality", ""),
            task=_task_for(arrays),
            class_names=list(arrays.class_names),
            channels=arrays.channels,
            image_height=arrays.image_shape[0],
            image_width=arrays.image_shape[1],
            split_counts=arrays.split_counts(),
            class_counts=arrays.class_counts(),
            data_file=stored_name,
            sha256=digest,
            size_bytes=size_bytes,
            source=(Dataset.Source.MEDMNIST if info else
                    Dataset.Source.NPZ if filename.lower().endswith(".npz") else
                    Dataset.Source.IMAGE_ZIP),
            source_detail=(Path(filename).name if builtin else Path(filename).name[:255]),
            source_preprocessing=preprocessing,
            license=(info or {}).get("license", ""),
            owner=None if builtin else owner,
            is_builtin=builtin,
            visibility=Visibility.PUBLIC if builtin else visibility,
        )
    except Exception:
        default_storage.delete(stored_name)  # no orphan file when the row cannot be written
        raise


def _uses_of(dataset: Dataset) -> str:
    """What still refers to a dataset, e.g. "trained models (1) and training jobs (2)"."""
    counts = [(dataset.model_versions.count(), "trained models"),
              (dataset.training_jobs.count(), "training jobs")]
    return " and ".join(f"{what} ({n})" for n, what in counts if n)


def dataset_delete(*, dataset: Dataset) -> None:
    """Delete a dataset and its stored file, once committed.

    Refused with ``DatasetImportError``, changing nothing, while trained models or training jobs
    (whose history keeps its dataset) refer to it.
    """
    uses = _uses_of(dataset)
    if uses:
        raise DatasetImportError(f"this dataset is still used by {uses}")
    file_name = dataset.data_file.name
    try:
        with transaction.atomic():
            dataset.delete()
            transaction.on_commit(lambda: default_storage.delete(file_name))
    except ProtectedError as exc:  # a job or model created since the check above
        uses = _uses_of(dataset) or "a model or training job created meanwhile"
        raise DatasetImportError(f"this dataset is still used by {uses}") from exc


# --- MedMNIST built-ins ------------------------------------------------------------------------


def medmnist_filename(flag: str, size: int = 28) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


class _DownloadTooLarge(Exception):
    """A download past ``MEDMNIST_DOWNLOAD_MAX_BYTES``; turned into a DatasetImportError."""


def _download_medmnist(flag: str, size: int, target: Path, timeout: float,
                       progress: Progress | None = None) -> None:
    """Fetch an official file from the address in the ``medmnist`` package's metadata.

    Reads at most ``MEDMNIST_DOWNLOAD_MAX_BYTES``; a larger answer is refused and nothing is kept.
    ``progress(bytes_received, bytes_expected)`` is called as it arrives (expected 0 when the
    server does not say).
    """
    info = dataset_io.medmnist_info(flag)
    if not info:
        raise DatasetImportError(f"'{flag}' is not a MedMNIST 2D dataset")
    url, md5 = info["urls"].get(size), dataset_io.published_md5(flag, size)
    if not url:
        raise DatasetImportError(f"MedMNIST publishes no {size}x{size} file for '{flag}'")
    limit = settings.MEDMNIST_DOWNLOAD_MAX_BYTES
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:  # noqa: S310
            declared = getattr(response, "headers", {}).get("Content-Length")
            if declared and declared.isdigit() and int(declared) > limit:
                raise _DownloadTooLarge(f"its Content-Length is {declared} bytes")
            expected = int(declared) if declared and declared.isdigit() else 0
            hasher = hashlib.md5()  # noqa: S324 - the published checksum is MD5
            received = 0
            while chunk := response.read(1 << 20):
                received += len(chunk)
                if received > limit:
                    raise _DownloadTooLarge(f"more than {limit} bytes arrived")
                hasher.update(chunk)
                out.write(chunk)
                if progress is not None:
                    progress(received, expected)
    except _DownloadTooLarge as exc:
        target.unlink(missing_ok=True)
        raise DatasetImportError(
            f"download of {flag} ({url}) refused: {exc}, over MEDMNIST_DOWNLOAD_MAX_BYTES "
            f"({limit}); nothing was kept"
        ) from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        target.unlink(missing_ok=True)
        raise DatasetImportError(
            f"could not download {flag} ({url}): {exc}. Offline? Put the official "
            f"{medmnist_filename(flag, size)} in the folder named by MEDMNIST_DIR."
        ) from exc
    if md5 and hasher.hexdigest() != md5:
        target.unlink(missing_ok=True)
        raise DatasetImportError(f"downloaded {flag} has MD5 {hasher.hexdigest()}, expected {md5}")


def builtin_dataset_import(
    *, flag: str, size: int = 28, folder: str | Path | None = None, download: bool = True,
    progress: Progress | None = None, download_progress: Progress | None = None,
) -> tuple[Dataset, bool]:
    """Import an official MedMNIST dataset as a built-in visible to every user.

    Looks in ``folder`` (``MEDMNIST_DIR``) first, then downloads when allowed. Returns the dataset
    and whether it was created (an identical built-in already present is reused). ``progress``
    follows the import (images), ``download_progress`` the download (bytes).

    Raises:
        DatasetImportError: when the file is not in ``folder`` and cannot be downloaded (or
            ``download`` is False), when its MD5 is not the published one, when a download is
            over ``MEDMNIST_DOWNLOAD_MAX_BYTES``, or when a built-in of that file already exists
            with other contents; nothing is stored.
    """
    filename = medmnist_filename(flag, size)
    folder = Path(folder or settings.MEDMNIST_DIR)
    local = folder / filename
    with contextlib.ExitStack() as stack:
        if not local.is_file():
            if not download:
                raise DatasetImportError(f"{filename} not found in {folder}")
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory())) / filename
            _download_medmnist(flag, size, tmp, settings.MEDMNIST_DOWNLOAD_TIMEOUT,
                               progress=download_progress)
            local = tmp
        else:
            _check_published_md5(flag, size, local)
        digest = dataset_io.sha256_of(local)
        existing = Dataset.objects.filter(is_builtin=True, source_detail=filename).first()
        if existing and existing.sha256 == digest:
            return existing, False
        if existing:
            raise DatasetImportError(
                f"built-in {filename} already exists with different contents "
                f"({existing.sha256[:12]} vs {digest[:12]}); delete it first to replace it"
            )
        with open(local, "rb") as fh:
            try:
                dataset = dataset_import(
                    source=fh, filename=filename, owner=None, builtin=True, progress=progress,
                    name=_medmnist_title(flag, size),
                )
            except IntegrityError:  # imported concurrently by another process
                return Dataset.objects.get(is_builtin=True, source_detail=filename), False
        return dataset, True


def _check_published_md5(flag: str, size: int, local: Path) -> None:
    """Refuse a file in ``MEDMNIST_DIR`` that is not the published one.

    A built-in is shown to every user as the official dataset, with MedMNIST's licence and class
    names, and results on it are compared with the published ones; a stale, partial or edited file
    must not become that. Importing it as an ordinary dataset instead would quietly give the admin
    something other than what they asked for, so the import stops and says what to do.
    """
    expected = dataset_io.published_md5(flag, size)
    if not expected:
        raise DatasetImportError(
            f"cannot check {local.name} against MedMNIST's published checksum ('{flag}' at "
            f"{size}x{size} is unknown to the installed medmnist package, or it is not installed)")
    actual = dataset_io.md5_of(local)
    if actual != expected:
        raise DatasetImportError(
            f"{local} has MD5 {actual}, expected {expected}: it is not the official MedMNIST "
            "file. Replace it with the official download (or upload it as an ordinary dataset).")


def _medmnist_title(flag: str, size: int) -> str:
    title = flag.removesuffix("mnist").capitalize() + "MNIST"  # the package's class naming
    return title if size == 28 else f"{title} ({size}x{size})"


# --- Model registry -----------------------------------------------------------------------------


class ArtifactIntegrityError(Exception):
    """A model artifact whose bytes no longer match the sha256 recorded when it was registered."""


def _next_version(name: str) -> int:
    latest = ModelVersion.objects.filter(name=name).order_by("-version").first()
    return latest.version + 1 if latest else 1


def model_version_register(
    *,
    name: str,
    architecture: str,
    dataset: Dataset,
    owner,
    artifact_path: Path,
    config: dict,
    metrics: dict | None = None,
    val_metrics: dict | None = None,
    history: list | None = None,
    num_params: int = 0,
    train_seconds: float = 0.0,
    manifest: dict | None = None,
) -> ModelVersion:
    """Store a trained ``.keras`` artifact and record it as the next version of ``name``.

    Must be called inside the caller's transaction when it links the model to something else
    (a training job), so that both rows appear together or not at all.
    """
    digest = dataset_io.sha256_of(artifact_path)
    with open(artifact_path, "rb") as fh:
        stored = default_storage.save(f"models/{digest[:16]}.keras", File(fh))
    try:
        for _ in range(5):  # two registrations of one name may race for a version number
            try:
                with transaction.atomic():
                    return ModelVersion.objects.create(
                        name=name[:120], version=_next_version(name), architecture=architecture,
                        dataset=dataset, owner=owner, artifact=stored, sha256=digest,
                        config=config, metrics=metrics or {}, val_metrics=val_metrics or {},
                        history=history or [], num_params=num_params,
                        train_seconds=train_seconds, manifest=manifest or {},
                    )
            except IntegrityError:
                continue
        raise RuntimeError(f"could not allocate a version number for model '{name}'")
    except Exception:
        default_storage.delete(stored)
        raise


def model_artifact_local_path(*, model_version: ModelVersion, cache_dir: Path) -> Path:
    """A verified local copy of the artifact; raises ArtifactIntegrityError when tampered with."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    local = cache_dir / f"{model_version.sha256}.keras"
    if not local.exists():
        tmp = local.with_suffix(".part")
        with model_version.artifact.open("rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(chunk)
        tmp.replace(local)
    actual = dataset_io.sha256_of(local)
    if actual != model_version.sha256:
        local.unlink(missing_ok=True)
        raise ArtifactIntegrityError(
            f"artifact of {model_version} has sha256 {actual[:16]}…, expected "
            f"{model_version.sha256[:16]}…; refusing to load it"
        )
    return local

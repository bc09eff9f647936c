"""Batch inference inputs and outputs, Django-free.

A batch is an ``.npz`` (an ``images`` array with optional ``labels``, or the official MedMNIST
layout, whose ``test`` split is used) or a ``.zip`` of image files. Images in a zip may be any
size: each goes through the dataset's own source path (:func:`medml.images.to_model_input`).
When every top-level folder of a zip is a class name, the folder gives the label.
"""

from __future__ import annotations

import csv
import io
import json
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

import numpy as np

from medml import dataset_io, images

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# Entries a zip may declare per image allowed: folders and the metadata files macOS adds (._name)
# are members that are not images.
MEMBERS_PER_IMAGE = 4
Progress = Callable[[int, int], None]


class BatchInputError(ValueError):
    """A batch input that cannot be read; the message names the problem."""


@dataclass
class BatchInput:
    images: np.ndarray  # uint8 (N, H, W, C)
    names: list[str]
    labels: np.ndarray | None = None
    warnings: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.names)


def _check_shape(array: np.ndarray, shape: tuple[int, int, int], what: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise BatchInputError(f"{what} has dtype {array.dtype}; expected uint8")
    if array.ndim == 3 and shape[2] == 1:
        array = array[..., np.newaxis]
    if array.ndim != 4 or tuple(array.shape[1:]) != tuple(shape):
        raise BatchInputError(
            f"{what} has shape {tuple(array.shape)}; the model takes (N, {shape[0]}, {shape[1]}, "
            f"{shape[2]}) images"
        )
    if len(array) == 0:
        raise BatchInputError(f"{what} is empty")
    return array


def _labels(raw: np.ndarray, count: int, num_classes: int) -> np.ndarray:
    labels = np.asarray(raw)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != count or not np.issubdtype(labels.dtype, np.integer):
        raise BatchInputError(
            f"labels must be {count} integers, got shape {labels.shape} and dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise BatchInputError(f"labels must lie in 0..{num_classes - 1}")
    return labels.astype(np.int64)


def read_npz(
    source: BinaryIO, *, shape: tuple[int, int, int], num_classes: int,
    limits: dataset_io.ImportLimits | None = None, progress: Progress | None = None,
) -> BatchInput:
    """The images (and labels) of an ``.npz``, checked before any array is loaded.

    ``limits`` (by default :class:`medml.dataset_io.ImportLimits`) bound the archive's members
    and declared bytes; each array's header must fit its member, so a forged shape cannot make
    the loader allocate more memory than the file holds. The images' declared dtype and shape are
    checked before their data is read. ``progress(read, total)`` is called as the images are
    decompressed (every 256 KiB or so), ending with ``(total, total)``.
    """
    # np.load takes anything that is not a zip for a pickle or a bare .npy array: refuse it
    # here, so the message says what is wrong rather than something about pickles.
    if not zipfile.is_zipfile(source):
        raise BatchInputError("not a valid .npz file (it is not a zip archive of arrays)")
    source.seek(0)
    try:
        headers = dataset_io.inspect_npz(source, limits or dataset_io.ImportLimits())
    except dataset_io.DatasetFormatError as exc:
        raise BatchInputError(str(exc)) from exc
    if "images" in headers:
        images_key, labels_key = "images", "labels" if "labels" in headers else None
    elif {"test_images", "test_labels"} <= headers.keys():
        images_key, labels_key = "test_images", "test_labels"
    else:
        raise BatchInputError("the .npz needs an 'images' array (and optionally 'labels'), "
                              "or the MedMNIST test_images/test_labels keys")
    declared = headers[images_key]
    # Refused from the header: a wrong dtype or shape is not worth decompressing first.
    _check_shape(np.broadcast_to(np.zeros((), dtype=declared.dtype), declared.shape), shape,
                 images_key)
    source.seek(0)
    try:
        with zipfile.ZipFile(source) as archive:
            imgs = _check_shape(_read_images(archive, images_key, declared, progress), shape,
                                images_key)
            labels = None
            if labels_key:
                with archive.open(f"{labels_key}.npy") as member:
                    raw = np.lib.format.read_array(member, allow_pickle=False)
                labels = _labels(raw, len(imgs), num_classes)
    except BatchInputError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise BatchInputError("object arrays are not allowed (pickled data)") from exc
        raise BatchInputError(f"not a valid .npz file ({exc})") from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        raise BatchInputError(f"not a valid .npz file ({exc})") from exc
    if progress:
        progress(len(imgs), len(imgs))
    return BatchInput(images=imgs, names=[str(i) for i in range(len(imgs))], labels=labels)


class _CountingReader:
    """A member's ``read``, calling ``on_read(bytes read so far)`` after each call. Not a real
    file, so numpy reads an array from it in chunks of 256 KiB rather than all at once."""

    def __init__(self, handle: BinaryIO, on_read: Callable[[int], None]):
        self._handle = handle
        self._on_read = on_read
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self.count += len(data)
        self._on_read(self.count)
        return data


def _read_images(archive: zipfile.ZipFile, key: str, declared: dataset_io.NpyHeader,
                 progress: Progress | None) -> np.ndarray:
    """The ``key`` array of an ``.npz``, reporting the images read as it is decompressed."""
    info = archive.getinfo(f"{key}.npy")
    count = declared.shape[0] if declared.shape else 0
    row_bytes = declared.declared_bytes // count if count else 0
    # The member holds its header, then the data.
    header_bytes = info.file_size - declared.declared_bytes
    reported = 0

    def on_read(read_bytes: int) -> None:
        nonlocal reported
        rows = min(max(read_bytes - header_bytes, 0) // row_bytes, count) if row_bytes else 0
        if rows > reported and rows < count:  # the last call comes once the array is checked
            reported = rows
            progress(rows, count)

    with archive.open(info) as member:
        if progress is None:
            return np.lib.format.read_array(member, allow_pickle=False)
        return np.lib.format.read_array(_CountingReader(member, on_read), allow_pickle=False)


def read_zip(
    source: BinaryIO, *, shape: tuple[int, int, int], class_names: list[str],
    preprocessing: dict | None, limits: dataset_io.ImportLimits, max_image_bytes: int,
    progress: Progress | None = None, colour_training: bool = True,
) -> BatchInput:
    """The images of a ``.zip``, each through the dataset's source path; labels from class folders.

    ``colour_training`` is passed to :func:`medml.images.to_model_input` (whether a grey image is
    unlike the model's training images).

    The archive's directory is checked before anything is decompressed: member names, links,
    declared sizes and counts. Its end record is read first, so a directory of millions of
    entries is refused before :mod:`zipfile` builds an object for each.
    """
    declared = dataset_io.declared_member_count(source)
    if declared is not None and declared > MEMBERS_PER_IMAGE * limits.max_members:
        raise BatchInputError(
            f"archive declares {declared} members; at most {MEMBERS_PER_IMAGE * limits.max_members} "
            f"are read for a limit of {limits.max_members} images")
    start = source.tell()
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BatchInputError(f"not a valid .zip file ({exc})") from exc
    with archive:
        try:
            dataset_io.check_zip_start(source, start)
        except dataset_io.DatasetFormatError as exc:
            raise BatchInputError(str(exc)) from exc
        members = []
        for info in archive.infolist():
            try:
                parts = dataset_io.check_member_is_safe(info)
            except dataset_io.DatasetFormatError as exc:
                raise BatchInputError(str(exc)) from exc
            # What the dataset import skips too: hidden files, macOS metadata, Windows thumbnails.
            if info.is_dir() or not parts or dataset_io._is_ignored_member(parts):
                continue
            if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
                raise BatchInputError(f"'{info.filename}' is not a PNG, JPEG, BMP or TIFF file")
            # Refused from its declared size: reading it first would expand a zip bomb in memory.
            if info.file_size > max_image_bytes:
                raise BatchInputError(f"'{info.filename}' has {info.file_size} bytes; the limit "
                                      f"is {max_image_bytes}")
            if len(members) == limits.max_members:  # refused before listing any further
                raise BatchInputError(
                    f"archive has more than {limits.max_members} images; the limit is "
                    f"{limits.max_members}")
            members.append((info, "/".join(parts)))
        if not members:
            raise BatchInputError("the archive holds no images")
        if sum(info.file_size for info, _ in members) > limits.max_total_bytes:
            raise BatchInputError(f"archive expands past the limit of {limits.max_total_bytes} bytes")
        members.sort(key=lambda member: member[0].filename)
        # Folders from the checked path: some Windows tools write "class\\image.png".
        labels = _folder_labels([path for _, path in members], class_names)
        arrays, names, notes = [], [], {}
        for done, (info, _) in enumerate(members, start=1):
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as exc:
                raise BatchInputError(f"'{info.filename}' is corrupt: {exc}") from exc
            try:
                image = images.decode_upload(data, max_pixels=limits.max_image_pixels,
                                             max_bytes=max_image_bytes)
                array, warn = images.to_model_input(
                    image, height=shape[0], width=shape[1], channels=shape[2],
                    preprocessing=preprocessing, colour_training=colour_training)
            except images.ImageInputError as exc:
                raise BatchInputError(f"'{info.filename}': {exc}") from exc
            arrays.append(array)
            names.append(info.filename)
            if warn:
                notes[info.filename] = warn
            if progress and (done % 64 == 0 or done == len(members)):
                progress(done, len(members))
    return BatchInput(images=np.stack(arrays), names=names,
                      labels=None if labels is None else np.asarray(labels, dtype=np.int64),
                      warnings=notes)


def _folder_labels(names: list[str], class_names: list[str]) -> list[int] | None:
    """Each member's class index when every image sits in a folder named after a class
    (``<class>/<file>``), under any single folders that wrap everything (what zipping a folder
    produces); ``None`` when the archive is not laid out so."""
    paths = [PurePosixPath(name).parts for name in names]
    while (all(len(parts) > 2 for parts in paths) and len({parts[0] for parts in paths}) == 1
           and paths[0][0] not in class_names):
        paths = [parts[1:] for parts in paths]
    if all(len(parts) > 1 for parts in paths) and {parts[0] for parts in paths} <= set(class_names):
        return [class_names.index(parts[0]) for parts in paths]
    return None


def write_results(
    batch: BatchInput, probs: np.ndarray, predicted: np.ndarray, class_names: list[str]
) -> tuple[bytes, bytes]:
    """The results as CSV and JSON bytes: name, predicted class, each class's probability."""
    # Whole arrays converted at once: per-element numpy access would dominate a large batch.
    rounded = np.round(np.asarray(probs, dtype=np.float64), 6).tolist()
    predicted_list = np.asarray(predicted).astype(int).tolist()
    labels = None if batch.labels is None else np.asarray(batch.labels).astype(int).tolist()
    rows = []
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["name", "predicted_index", "predicted_label"]
                    + (["true_label"] if labels is not None else [])
                    + [f"p[{c}]" for c in class_names])
    for i, (name, index, row_probs) in enumerate(zip(batch.names, predicted_list, rounded, strict=True)):
        row = {"name": name, "predicted_index": index, "predicted_label": class_names[index],
               "probabilities": dict(zip(class_names, row_probs, strict=True))}
        truth = []
        if labels is not None:
            row["true_index"] = labels[i]
            row["true_label"] = class_names[labels[i]]
            truth = [row["true_label"]]
        if name in batch.warnings:
            row["warnings"] = batch.warnings[name]
        rows.append(row)
        writer.writerow([_csv_safe(name), index, _csv_safe(row["predicted_label"]),
                         *map(_csv_safe, truth)] + [f"{p:.6f}" for p in row_probs])
    return text.getvalue().encode(), json.dumps(rows).encode()


def _csv_safe(text: str) -> str:
    """File and class names are user input: keep a spreadsheet from reading one as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text

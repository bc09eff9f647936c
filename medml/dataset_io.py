"""Reading, checking and writing datasets: MedMNIST ``.npz`` files and zips of image folders.

Everything a user uploads passes through here before it reaches training, so every function
treats its input as untrusted: archives are inspected before any member is decompressed, pickled
data is never loaded, and each rejection raises :class:`DatasetFormatError` with a message that
names the offending key, member or value.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import os
import re
import stat
import struct
import sys
import unicodedata
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import BinaryIO

import numpy as np
from PIL import Image

from medml import images as image_checks
from medml.data import SPLITS, DatasetArrays

Source = str | os.PathLike | BinaryIO

MEDMNIST_SIZES = (28, 64, 128, 224)
MIN_IMAGE_SIDE = 8
MIN_IMAGES_PER_CLASS = 3
# Without class names the class count comes from the largest label; a stray huge label must not
# turn into millions of generated names.
MAX_INFERRED_CLASSES = 1000
# Class names are shown in tables and stored with every prediction, in a 255-character column.
MAX_CLASS_NAME_LENGTH = 255

_SPLIT_KEYS = tuple(f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels"))
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Pillow format names accepted for the extensions above; MPO is what cameras write for JPEG.
_IMAGE_FORMATS = frozenset({"PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF"})
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# Files that operating systems drop into folders on their own; never part of the dataset.
_OS_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_SPLIT_FOLDER_ALIASES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_HASH_CHUNK = 1024 * 1024


class DatasetFormatError(ValueError):
    """An uploaded or stored dataset cannot be used; the message says exactly why."""


@dataclass(frozen=True)
class ImportLimits:
    """Upper bounds that protect a worker from oversized or malicious archives.

    Args:
        max_members: most entries (files and folders) an archive may hold.
        max_total_bytes: most bytes all members may take once decompressed; for image-folder
            zips also the most bytes the decoded image arrays may take.
        max_member_bytes: most bytes a single image file may take once decompressed.
        max_image_pixels: most pixels (width x height) a single image may have.
    """

    max_members: int = 200_000
    max_total_bytes: int = 2 * 1024**3
    max_member_bytes: int = 64 * 1024**2
    max_image_pixels: int = 4096 * 4096


# --------------------------------------------------------------------------------------------
# MedMNIST metadata


@lru_cache(maxsize=1)
def _medmnist_info_table() -> dict | None:
    try:
        # The package prints an install hint when torch is missing; only its metadata is needed.
        with contextlib.redirect_stdout(io.StringIO()):
            import medmnist.info
    except ImportError:
        return None
    return medmnist.info.INFO


def medmnist_info(flag: str) -> dict | None:
    """Metadata of an official MedMNIST dataset, from the ``medmnist`` package.

    Args:
        flag: dataset flag such as ``"bloodmnist"`` (case-insensitive).

    Returns:
        A dict with ``flag``, ``class_names`` (ordered by label index), ``task``,
        ``n_channels``, ``n_samples``, ``description``, ``license``, ``url`` and ``md5`` (of the
        28x28 file), and ``urls``/``md5s`` keyed by image size; or ``None`` when the flag is
        unknown or the ``medmnist`` package is not installed.
    """
    table = _medmnist_info_table()
    flag = flag.lower()
    if table is None or flag not in table:
        return None
    entry = table[flag]
    labels = entry.get("label", {})
    class_names = [labels[key] for key in sorted(labels, key=int)]
    urls = {28: entry.get("url")}
    md5s = {28: entry.get("MD5")}
    for size in MEDMNIST_SIZES[1:]:
        if f"url_{size}" in entry:
            urls[size] = entry[f"url_{size}"]
            md5s[size] = entry.get(f"MD5_{size}")
    return {
        "flag": flag,
        "class_names": class_names,
        "task": entry.get("task"),
        "n_channels": entry.get("n_channels"),
        "n_samples": dict(entry.get("n_samples", {})),
        "description": entry.get("description", ""),
        "license": entry.get("license", ""),
        "url": entry.get("url"),
        "md5": entry.get("MD5"),
        "urls": urls,
        "md5s": md5s,
    }


_MEDMNIST_FILENAME = re.compile(r"^([a-z]+mnist)(?:_(\d+))?\.npz$")


def parse_medmnist_filename(name: str) -> tuple[str, int] | None:
    """Flag and image size of an official 2D MedMNIST file name.

    ``"bloodmnist.npz"`` gives ``("bloodmnist", 28)`` and ``"breastmnist_64.npz"`` gives
    ``("breastmnist", 64)``. Any directory part of ``name`` is ignored. Returns ``None`` for
    other names, for 3D datasets and for sizes MedMNIST does not publish.
    """
    base = PurePosixPath(str(name).replace("\\", "/")).name.lower()
    match = _MEDMNIST_FILENAME.match(base)
    if match is None:
        return None
    size = int(match.group(2)) if match.group(2) else 28
    if size not in MEDMNIST_SIZES:
        return None
    return match.group(1), size


def published_md5(flag: str, size: int = 28) -> str | None:
    """The MD5 that MedMNIST publishes for its ``flag`` file at ``size``, or ``None`` if unknown."""
    info = medmnist_info(flag)
    return info["md5s"].get(size) if info else None


def official_medmnist_info(name: str, source: Source) -> dict | None:
    """:func:`medmnist_info` of the official MedMNIST file that ``source`` is, else ``None``.

    A file counts as official only when its name is an official one (``bloodmnist.npz``) *and*
    its MD5 equals the published checksum for that flag and size: a name alone is a claim anyone
    can make. The file is hashed whole, from its start.
    """
    parsed = parse_medmnist_filename(name)
    if parsed is None:
        return None
    expected = published_md5(*parsed)
    if not expected or md5_of(source) != expected:
        return None
    return medmnist_info(parsed[0])


# --------------------------------------------------------------------------------------------
# Archive and upload checks shared by dataset imports and batch inputs

# End of central directory record, and the ZIP64 locator and record that replace its counts.
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_EOCD_SEARCH = _EOCD.size + 0xFFFF  # the record plus the longest archive comment
# Uploaded file names: no longer than a file system allows, and never a path.
MAX_UPLOAD_NAME_LENGTH = 255
_NAME_FORBIDDEN = frozenset('/\\<>"|?*')
_NAME_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


@contextlib.contextmanager
def _binary(source: Source):
    """A readable binary handle on ``source``; a file object is left at the position it had."""
    if _is_file_object(source):
        position = source.tell()
        try:
            yield source
        finally:
            source.seek(position)
    else:
        with open(source, "rb") as handle:
            yield handle


def declared_member_count(source: Source) -> int | None:
    """How many entries a zip's end-of-central-directory record declares, or ``None`` without one.

    Read from the last bytes of the file, before :mod:`zipfile` builds an object for every entry
    of the central directory: an archive of millions of tiny entries is refused without that cost.
    """
    with _binary(source) as handle:
        handle.seek(0, io.SEEK_END)
        size = handle.tell()
        start = max(0, size - _EOCD_SEARCH)
        handle.seek(start)
        tail = handle.read(size - start)
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            return None
        count = _EOCD.unpack_from(tail, at)[4]
        if count != 0xFFFF or at < _ZIP64_LOCATOR.size:
            return count
        signature, _, record_offset, _ = _ZIP64_LOCATOR.unpack_from(tail, at - _ZIP64_LOCATOR.size)
        if signature != b"PK\x06\x07" or record_offset > size - _ZIP64_EOCD.size:
            return count
        handle.seek(record_offset)
        record = handle.read(_ZIP64_EOCD.size)
        if record[:4] != b"PK\x06\x06":
            return count
        return _ZIP64_EOCD.unpack(record)[7]


def check_zip_start(source: Source, start: int = 0) -> None:
    """Refuse a zip that does not begin at offset ``start`` (where its reader started reading).

    :mod:`zipfile` finds an archive appended to anything (an image, an HTML page, a program), so
    such a polyglot would otherwise pass for a plain archive.
    """
    with _binary(source) as handle:
        handle.seek(start)
        signature = handle.read(4)
    if signature not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DatasetFormatError(
            "the archive does not start at the beginning of the file (other data comes first)"
        )


def _check_declared_members(source: Source, limits: ImportLimits) -> None:
    """Refuse a zip whose directory declares more entries than ``limits.max_members``."""
    count = declared_member_count(source)
    if count is not None and count > limits.max_members:
        raise DatasetFormatError(f"archive has {count} members; the limit is {limits.max_members}")


@dataclass(frozen=True)
class NpyHeader:
    """What an ``.npy`` member of an ``.npz`` declares, read without loading its data."""

    shape: tuple[int, ...]
    dtype: np.dtype
    declared_bytes: int


def _read_npy_header(handle: BinaryIO, key: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, EOFError, zlib.error, zipfile.BadZipFile, OSError) as exc:
        raise DatasetFormatError(f"'{key}' is not a readable .npy array: {exc}") from exc
    return tuple(int(d) for d in shape), dtype


def inspect_npz(source: Source, limits: ImportLimits) -> dict[str, NpyHeader]:
    """Check an ``.npz`` archive before any array is loaded, and say what each array declares.

    Only the archive's directory and the first bytes of each ``.npy`` member are read. Refused:
    a file that is not a zip, more members than the limit, members whose names escape the archive
    or that are links, more declared bytes than the limit, an array of Python objects (pickled
    data), and a header that declares more data than its member holds (a shape that would make
    the loader allocate far more memory than the file could fill).

    Returns:
        Each array's key (its member name without ``.npy``) and declared shape, dtype and size.
    """
    _check_declared_members(source, limits)
    headers: dict[str, NpyHeader] = {}
    with _binary(source) as handle:
        start = handle.tell()
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
            raise DatasetFormatError(
                f"not a valid .npz file (a zip archive is expected): {exc}"
            ) from exc
        with archive:
            check_zip_start(handle, start)
            infos = archive.infolist()
            if len(infos) > limits.max_members:
                raise DatasetFormatError(
                    f"archive has {len(infos)} members; the limit is {limits.max_members}"
                )
            total = sum(info.file_size for info in infos)
            if total > limits.max_total_bytes:
                raise DatasetFormatError(
                    f"archive holds {total} bytes uncompressed; the limit is {limits.max_total_bytes}"
                )
            for info in infos:
                check_member_is_safe(info)
                if info.is_dir() or not info.filename.endswith(".npy"):
                    continue
                key = info.filename[: -len(".npy")]
                try:
                    with archive.open(info) as member:
                        shape, dtype = _read_npy_header(member, key)
                        header_bytes = member.tell()
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
                    if isinstance(exc, DatasetFormatError):
                        raise
                    raise DatasetFormatError(f"'{key}' is corrupt: {exc}") from exc
                if dtype.hasobject:
                    raise DatasetFormatError(f"{key}: object arrays are not allowed (pickled data)")
                declared = math.prod(shape) * dtype.itemsize
                held = info.file_size - header_bytes
                if declared > held:
                    raise DatasetFormatError(
                        f"'{key}' declares shape {_describe_shape(shape)} of {dtype} ({declared} "
                        f"bytes) but its member holds {max(held, 0)} bytes"
                    )
                headers[key] = NpyHeader(shape, dtype, declared)
    return headers


def upload_name_problem(name: str) -> str | None:
    """Why an uploaded file's name is refused, or ``None`` when it is acceptable.

    The platform never uses a client's file name to store anything, but it shows names back to
    users and writes them into results, so a name that is a path, holds control, invisible or
    bidirectional-override characters, markup characters or is longer than a file system allows
    is refused rather than silently cleaned.
    """
    if not name or not name.strip():
        return "the file name is empty"
    if len(name) > MAX_UPLOAD_NAME_LENGTH:
        return f"the file name has {len(name)} characters; the limit is {MAX_UPLOAD_NAME_LENGTH}"
    if name in (".", "..") or ".." in re.split(r"[/\\]", name):
        return "the file name is a path that leaves its folder"
    for char in name:
        if char in _NAME_FORBIDDEN:
            return f"the file name contains {char!r}; paths and markup are not accepted in names"
        if unicodedata.category(char) in _NAME_FORBIDDEN_CATEGORIES:
            return (f"the file name contains the invisible or control character "
                    f"U+{ord(char):04X} ({unicodedata.name(char, 'unnamed')})")
    return None


# --------------------------------------------------------------------------------------------
# MedMNIST .npz


def _is_file_object(source: Source) -> bool:
    return hasattr(source, "read")


def _describe_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def _read_npz_arrays(source: Source) -> tuple[dict[str, np.ndarray], bool]:
    """The six official arrays of an npz file, and whether it holds no other keys."""
    try:
        npz = np.load(source, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetFormatError(f"not a valid .npz file: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DatasetFormatError("not a valid .npz file: it holds a single array, not an archive")
    with npz:
        keys = set(npz.files)
        for key in _SPLIT_KEYS:
            if key not in keys:
                raise DatasetFormatError(f"missing key '{key}'")
        arrays = {}
        for key in _SPLIT_KEYS:
            try:
                value = npz[key]
            except ValueError as exc:
                if "pickle" in str(exc).lower() or "object" in str(exc).lower():
                    raise DatasetFormatError(
                        f"{key}: object arrays are not allowed (pickled data)"
                    ) from exc
                raise DatasetFormatError(f"{key} cannot be read: {exc}") from exc
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                raise DatasetFormatError(f"{key} is corrupt: {exc}") from exc
            if not isinstance(value, np.ndarray):
                raise DatasetFormatError(f"{key} is not a numpy array")
            arrays[key] = value
    return arrays, keys == set(_SPLIT_KEYS)


def _checked_images(key: str, images: np.ndarray) -> np.ndarray:
    if images.dtype == object:
        raise DatasetFormatError(f"{key}: object arrays are not allowed (pickled data)")
    if images.dtype != np.uint8:
        raise DatasetFormatError(f"{key} has dtype {images.dtype}; expected uint8")
    if images.ndim == 3:
        images = images[..., np.newaxis]
    elif images.ndim != 4 or images.shape[3] not in (1, 3):
        raise DatasetFormatError(
            f"{key} has shape {_describe_shape(images.shape)}; expected (N, H, W) or "
            "(N, H, W, C) with C in {1, 3}"
        )
    height, width = images.shape[1:3]
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise DatasetFormatError(
            f"{key} holds {height}x{width} images; both sides must be at least {MIN_IMAGE_SIDE}"
        )
    return images


def _checked_labels(key: str, labels: np.ndarray, count: int) -> np.ndarray:
    if labels.dtype == object:
        raise DatasetFormatError(f"{key}: object arrays are not allowed (pickled data)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(f"{key} has dtype {labels.dtype}; expected an integer dtype")
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise DatasetFormatError(
            f"{key} has shape {_describe_shape(labels.shape)}: multi-label tasks are not "
            "supported (one class label per image is expected)"
        )
    if labels.ndim not in (1, 2):
        raise DatasetFormatError(
            f"{key} has shape {_describe_shape(labels.shape)}; expected (N,) or (N, 1)"
        )
    labels = labels.reshape(-1)
    if len(labels) != count:
        images_key = key.replace("_labels", "_images")
        raise DatasetFormatError(
            f"{key} has {len(labels)} labels but {images_key} has {count} images"
        )
    if len(labels) and labels.min() < 0:
        raise DatasetFormatError(f"label {int(labels.min())} in {key} is negative")
    return labels


def check_class_names(class_names: list[str]) -> None:
    """Refuse class names that are empty, repeated or longer than ``MAX_CLASS_NAME_LENGTH``."""
    for name in class_names:
        if not name.strip():
            raise DatasetFormatError(f"class names must not be empty: {class_names}")
        if len(name) > MAX_CLASS_NAME_LENGTH:
            raise DatasetFormatError(
                f"class name '{name[:40]}…' has {len(name)} characters; the limit is "
                f"{MAX_CLASS_NAME_LENGTH}"
            )
    if len(set(class_names)) != len(class_names):
        raise DatasetFormatError(f"class names are not unique: {class_names}")


def _validated_splits(
    raw: dict[str, tuple[np.ndarray, np.ndarray]],
    class_names: list[str] | None,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """Check images and labels of every split; return them normalised, with the class names."""
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in SPLITS:
        images, labels = raw[split]
        images = _checked_images(f"{split}_images", images)
        labels = _checked_labels(f"{split}_labels", labels, len(images))
        if len(images) == 0:
            raise DatasetFormatError(f"split '{split}' is empty")
        splits[split] = (images, labels)

    reference = splits["train"][0].shape[1:]
    for split in SPLITS[1:]:
        shape = splits[split][0].shape[1:]
        if shape != reference:
            raise DatasetFormatError(
                f"{split}_images holds images of shape {_describe_shape(shape)} but "
                f"train_images holds {_describe_shape(reference)}; all splits must match"
            )

    if class_names is not None:
        class_names = [str(name) for name in class_names]
        check_class_names(class_names)
        num_classes = len(class_names)
        for split in SPLITS:
            largest = int(splits[split][1].max())
            if largest >= num_classes:
                raise DatasetFormatError(
                    f"label {largest} in {split}_labels is out of range for {num_classes} classes"
                )
    else:
        num_classes = max(int(labels.max()) for _, labels in splits.values()) + 1
        if num_classes > MAX_INFERRED_CLASSES:
            raise DatasetFormatError(
                f"the largest label is {num_classes - 1}, which implies {num_classes} classes; "
                f"the limit without class names is {MAX_INFERRED_CLASSES}"
            )
        class_names = [f"class {index}" for index in range(num_classes)]
    if num_classes < 2:
        raise DatasetFormatError(f"the dataset has {num_classes} class; at least 2 are needed")

    normalised = {
        split: (np.ascontiguousarray(images), labels.astype(np.int64))
        for split, (images, labels) in splits.items()
    }
    return normalised, class_names


def load_medmnist_npz(
    source: Source,
    *,
    class_names: list[str] | None = None,
    limits: ImportLimits | None = None,
) -> DatasetArrays:
    """Load and check a dataset stored in the official MedMNIST ``.npz`` layout.

    Args:
        source: path or binary file object of the ``.npz`` file. A file object is read from
            its current position, which is restored afterwards.
        class_names: names of the classes by label index. When omitted the number of classes
            is the largest label plus one and the names are ``"class 0"``, ``"class 1"``, ...
        limits: size limits checked before any array is decompressed.

    Returns:
        The dataset, with ``extra={"format": "medmnist-npz", "official_keys_only": bool}``.

    Raises:
        DatasetFormatError: a key is missing, an array has the wrong dtype or shape, the
            labels do not fit the images or classes, a split is empty, the file holds pickled
            objects, it is not a readable ``.npz`` archive, or ``class_names`` are empty,
            repeated or too long (see :func:`check_class_names`).
    """
    limits = limits or ImportLimits()
    start = source.tell() if _is_file_object(source) else None
    try:
        inspect_npz(source, limits)
        if start is not None:
            source.seek(start)
        arrays, official_keys_only = _read_npz_arrays(source)
    finally:
        if start is not None:
            source.seek(start)
    raw = {split: (arrays[f"{split}_images"], arrays[f"{split}_labels"]) for split in SPLITS}
    splits, names = _validated_splits(raw, class_names)
    return DatasetArrays(
        splits=splits,
        class_names=names,
        extra={"format": "medmnist-npz", "official_keys_only": official_keys_only},
    )


def save_dataset_npz(arrays: DatasetArrays, target: Source) -> None:
    """Write a dataset in the official MedMNIST ``.npz`` layout.

    Images are stored as ``(N, H, W)`` for one channel and ``(N, H, W, 3)`` for three, labels as
    ``(N, 1)`` of the smallest unsigned dtype that holds every class id, so the file loads
    with :func:`load_dataset_npz` and with the ``medmnist`` package alike.

    Args:
        arrays: the dataset to write; it is checked the same way an import is.
        target: path (written as given, no suffix added) or binary file object.
    """
    raw = {split: arrays.splits[split] for split in SPLITS}
    splits, _ = _validated_splits(raw, arrays.class_names)
    label_dtype = np.min_scalar_type(max(arrays.num_classes - 1, 0))
    payload: dict[str, np.ndarray] = {}
    for split in SPLITS:
        images, labels = splits[split]
        if images.shape[3] == 1:
            images = images[..., 0]
        payload[f"{split}_images"] = images
        payload[f"{split}_labels"] = labels.astype(label_dtype).reshape(-1, 1)
    if _is_file_object(target):
        np.savez_compressed(target, **payload)
    else:
        # np.savez_compressed appends ".npz" to paths lacking it; writing through a handle
        # keeps the path the caller chose.
        with open(target, "wb") as handle:
            np.savez_compressed(handle, **payload)


def load_dataset_npz(
    source: Source,
    class_names: list[str],
    *,
    limits: ImportLimits | None = None,
) -> DatasetArrays:
    """Load a dataset written by :func:`save_dataset_npz`.

    Stored files were checked when they were imported, so no size limit applies unless
    ``limits`` is given; the content is still validated.
    """
    limits = limits or ImportLimits(max_total_bytes=sys.maxsize)
    return load_medmnist_npz(source, class_names=class_names, limits=limits)


# --------------------------------------------------------------------------------------------
# Zip of image folders


# What Python's zipfile reads: stored, deflate, bzip2 and LZMA (not deflate64, nor AES).
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)


def _is_ignored_member(parts: list[str]) -> bool:
    return (
        parts[0] == "__MACOSX"
        or any(part.startswith(".") for part in parts)
        or parts[-1].lower() in _OS_JUNK_NAMES
    )


def check_member_is_safe(info: zipfile.ZipInfo) -> list[str]:
    """Path components of a member, after rejecting names that could escape the archive."""
    name = info.filename
    normalised = name.replace("\\", "/")
    if normalised.startswith("/"):
        raise DatasetFormatError(f"member '{name}' has an absolute path")
    if re.match(r"^[A-Za-z]:", normalised):
        raise DatasetFormatError(f"member '{name}' has a drive letter")
    parts = [part for part in normalised.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise DatasetFormatError(f"member '{name}' escapes the archive")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DatasetFormatError(f"member '{name}' is a symbolic link")
    if info.flag_bits & 0x1:
        raise DatasetFormatError(f"member '{name}' is encrypted")
    if not info.is_dir() and info.compress_type not in _ZIP_METHODS:
        raise DatasetFormatError(
            f"member '{name}' uses zip compression method {info.compress_type}, which cannot be "
            "read; zip the folder again with standard (deflate) compression"
        )
    return parts


def _image_members(
    archive: zipfile.ZipFile, limits: ImportLimits
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Every image member with its path components, sorted by name; nothing is decompressed."""
    infos = archive.infolist()
    if len(infos) > limits.max_members:
        raise DatasetFormatError(
            f"archive has {len(infos)} members; the limit is {limits.max_members}"
        )
    total = sum(info.file_size for info in infos if not info.is_dir())
    if total > limits.max_total_bytes:
        raise DatasetFormatError(
            f"archive holds {total} bytes uncompressed; the limit is {limits.max_total_bytes}"
        )
    members = []
    for info in infos:
        parts = check_member_is_safe(info)
        if info.is_dir() or not parts:
            continue
        if info.file_size > limits.max_member_bytes:
            raise DatasetFormatError(
                f"member '{info.filename}' is {info.file_size} bytes uncompressed; "
                f"the limit is {limits.max_member_bytes}"
            )
        if _is_ignored_member(parts):
            continue
        if not parts[-1].lower().endswith(_IMAGE_EXTENSIONS):
            raise DatasetFormatError(
                f"member '{info.filename}' is not an image; allowed extensions are "
                + ", ".join(_IMAGE_EXTENSIONS)
            )
        members.append((info, parts))
    if not members:
        raise DatasetFormatError("the archive holds no images")
    members.sort(key=lambda member: member[0].filename)
    return members


def _layout_error(name: str) -> DatasetFormatError:
    return DatasetFormatError(
        f"member '{name}' is not at <class>/<file> or <split>/<class>/<file> "
        "(split being train, val or test)"
    )


def _assign_layout(
    members: list[tuple[zipfile.ZipInfo, list[str]]],
) -> tuple[bool, list[tuple[str | None, str]]]:
    """Whether the archive has split folders, and each member's (split, class)."""
    paths = [parts for _, parts in members]
    # A single folder wrapping everything (what zipping a folder produces) is not a level.
    # Split folders come three at a time, so one lone top folder is never the split level.
    while all(len(parts) >= 3 for parts in paths) and len({parts[0] for parts in paths}) == 1:
        if len(paths[0]) == 3 and paths[0][0].lower() in _SPLIT_FOLDER_ALIASES:
            break
        paths = [parts[1:] for parts in paths]

    depths = [len(parts) for parts in paths]
    for (info, _), depth in zip(members, depths, strict=True):
        if depth not in (2, 3):
            raise _layout_error(info.filename)
    if len(set(depths)) > 1:
        # Name a member of the rarer depth: that is the one out of place.
        odd_depth = min((2, 3), key=depths.count)
        raise _layout_error(members[depths.index(odd_depth)][0].filename)

    if depths[0] == 2:
        return False, [(None, parts[0]) for parts in paths]

    found = set()
    for (info, _), parts in zip(members, paths, strict=True):
        split = _SPLIT_FOLDER_ALIASES.get(parts[0].lower())
        if split is None:
            raise DatasetFormatError(
                f"member '{info.filename}' is in folder '{parts[0]}'; with split folders the "
                "top level must hold only train, val and test"
            )
        found.add(split)
    missing = [split for split in SPLITS if split not in found]
    if missing:
        raise DatasetFormatError(
            "the archive uses split folders but has no "
            + " or ".join(f"'{split}'" for split in missing)
            + " folder; train, val and test are all needed"
        )
    return True, [(_SPLIT_FOLDER_ALIASES[parts[0].lower()], parts[1]) for parts in paths]


def _stratified_split(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Indices of each split, drawn per class so every class is in every split."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for class_id in range(int(labels.max()) + 1):
        indices = rng.permutation(np.flatnonzero(labels == class_id))
        count = len(indices)
        n_test = min(max(1, round(count * test_fraction)), count - 2)
        n_val = min(max(1, round(count * val_fraction)), count - 1 - n_test)
        chosen["test"].append(indices[:n_test])
        chosen["val"].append(indices[n_test : n_test + n_val])
        chosen["train"].append(indices[n_test + n_val :])
    return {split: np.sort(np.concatenate(parts)) for split, parts in chosen.items()}


def _open_checked_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Open an image header, rejecting unknown formats and oversized images before decoding."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise DatasetFormatError(f"'{name}' is too large (decompression bomb?): {exc}") from exc
    except (OSError, ValueError, SyntaxError, zlib.error) as exc:
        raise DatasetFormatError(f"'{name}' is not a readable image: {exc}") from exc
    if image.format not in _IMAGE_FORMATS:
        raise DatasetFormatError(
            f"'{name}' is a {image.format} image; only PNG, JPEG, BMP and TIFF are accepted"
        )
    width, height = image.size
    if width * height > max_pixels:
        raise DatasetFormatError(
            f"'{name}' has {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(decompression bomb?)"
        )
    return image


def _inspect_image(data: bytes, name: str, max_pixels: int) -> tuple[tuple[int, int], str]:
    """Size and mode of an image, after checking its structure without decoding pixels.

    ``verify`` catches truncated files and, for PNG, damaged chunks, so a broken member is
    reported as such rather than as an odd size or mode.
    """
    image = _open_checked_image(data, name, max_pixels)
    size, mode = image.size, image.mode
    try:
        image_checks.check_image_structure(image)
        image.verify()
    except image_checks.ImageInputError as exc:
        raise DatasetFormatError(f"'{name}': {exc}") from exc
    except (OSError, ValueError, SyntaxError, zlib.error, EOFError) as exc:
        raise DatasetFormatError(f"'{name}' is not a readable image: {exc}") from exc
    finally:
        image.close()
    return size, mode


def _decode_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Fully decode an image; a corrupt or truncated file is an error naming the member."""
    image = _open_checked_image(data, name, max_pixels)
    try:
        image.load()
        image_checks.check_no_active_content(data, image)
    except image_checks.ImageInputError as exc:
        raise DatasetFormatError(f"'{name}': {exc}") from exc
    except (OSError, ValueError, SyntaxError, zlib.error, EOFError) as exc:
        raise DatasetFormatError(f"'{name}' is not a readable image: {exc}") from exc
    return image


def _to_8bit(image: Image.Image, name: str) -> Image.Image:
    """High bit depth grayscale scaled to 8 bits (Pillow's own conversion would clip)."""
    if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise DatasetFormatError(f"'{name}' holds NaN or infinite pixel values")
    if image.mode.startswith("I;16"):
        scale = 255 / 65535
    elif values.min() < 0 or values.max() > 65535:
        raise DatasetFormatError(
            f"'{name}' has pixel values from {values.min()} to {values.max()}; "
            "only 8- and 16-bit ranges are supported"
        )
    else:
        scale = 1.0 if values.max() <= 255 else 255 / 65535
    return Image.fromarray(np.rint(values * scale).astype(np.uint8))


def _convert_image(image: Image.Image, name: str, channels: int) -> Image.Image:
    image = _to_8bit(image, name)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("L" if channels == 1 else "RGB")


def load_image_folder_zip(
    source: Source,
    *,
    limits: ImportLimits | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    image_size: int | None = None,
    channels: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> DatasetArrays:
    """Load a zip of class-named folders of images as a dataset.

    The archive holds either ``<class>/<file>`` or ``<split>/<class>/<file>`` with split folders
    ``train``, ``val`` and ``test``, optionally inside one common top-level folder.
    ``__MACOSX/``, dotfiles and folders are ignored. Every member name and declared size is
    checked before anything is decompressed.

    Args:
        source: path or binary file object of the zip.
        limits: bounds on members, sizes and pixels.
        seed: seed of the stratified split used when the archive has no split folders.
        val_fraction: share of each class put in ``val`` when splitting.
        test_fraction: share of each class put in ``test`` when splitting.
        image_size: side of the square images to produce; required when the images do not all
            share one size. Images are resized with bilinear filtering.
        channels: 1 or 3. By default 1 when every image is grayscale, else 3.
        progress: called as ``progress(done, total)`` while images are decoded.

    Returns:
        The dataset; class names are the folder names sorted alphabetically, and
        ``extra={"format": "image-folder-zip", "files": {split: [member names in order]}}``.

    Raises:
        DatasetFormatError: an unsafe, oversized, misplaced or unreadable member, a size
            mismatch without ``image_size``, a class only in val/test, a class folder name
            longer than ``MAX_CLASS_NAME_LENGTH``, or a class with fewer than 3 images when the
            archive has to be split.
    """
    limits = limits or ImportLimits()
    if channels not in (None, 1, 3):
        raise DatasetFormatError(f"channels must be 1 or 3. Received: channels={channels}")
    if image_size is not None and not MIN_IMAGE_SIDE <= image_size <= 4096:
        raise DatasetFormatError(
            f"image_size must be between {MIN_IMAGE_SIDE} and 4096. Received: "
            f"image_size={image_size}"
        )
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DatasetFormatError(
            "val_fraction and test_fraction must be positive and sum to less than 1. Received: "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )

    start = source.tell() if _is_file_object(source) else None
    try:
        return _load_image_folder_archive(
            source,
            limits=limits,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            image_size=image_size,
            channels=channels,
            progress=progress,
        )
    finally:
        if start is not None:
            source.seek(start)


def _load_image_folder_archive(
    source: Source,
    *,
    limits: ImportLimits,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    image_size: int | None,
    channels: int | None,
    progress: Callable[[int, int], None] | None,
) -> DatasetArrays:
    _check_declared_members(source, limits)
    start = source.tell() if _is_file_object(source) else 0
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise DatasetFormatError(f"not a valid zip archive: {exc}") from exc
    with archive:
        check_zip_start(source, start)
        members = _image_members(archive, limits)
        has_split_folders, placement = _assign_layout(members)
        class_names = sorted({class_name for _, class_name in placement})
        if len(class_names) < 2:
            raise DatasetFormatError(
                f"the archive has {len(class_names)} class folder; at least 2 are needed"
            )
        check_class_names(class_names)
        class_ids = {name: index for index, name in enumerate(class_names)}
        labels = np.array([class_ids[name] for _, name in placement], dtype=np.int64)
        names = [info.filename for info, _ in members]

        if has_split_folders:
            split_of = np.array([split for split, _ in placement])
            in_train = set(labels[split_of == "train"].tolist())
            for split in SPLITS[1:]:
                for class_id in sorted(set(labels[split_of == split].tolist()) - in_train):
                    raise DatasetFormatError(
                        f"class '{class_names[class_id]}' appears in {split} but not in train"
                    )
            order = {split: np.flatnonzero(split_of == split) for split in SPLITS}
        else:
            counts = np.bincount(labels, minlength=len(class_names))
            for class_id, count in enumerate(counts):
                if count < MIN_IMAGES_PER_CLASS:
                    raise DatasetFormatError(
                        f"class '{class_names[class_id]}' has {count} image"
                        f"{'' if count == 1 else 's'}; at least {MIN_IMAGES_PER_CLASS} are "
                        "needed to split it into train, val and test"
                    )
            order = _stratified_split(labels, seed, val_fraction, test_fraction)

        max_pixels = limits.max_image_pixels
        if Image.MAX_IMAGE_PIXELS is not None:
            max_pixels = min(max_pixels, Image.MAX_IMAGE_PIXELS)

        def read(info: zipfile.ZipInfo) -> bytes:
            try:
                with archive.open(info) as handle:
                    data = handle.read(limits.max_member_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
                raise DatasetFormatError(f"member '{info.filename}' is corrupt: {exc}") from exc
            if len(data) > limits.max_member_bytes:
                raise DatasetFormatError(
                    f"member '{info.filename}' is larger than {limits.max_member_bytes} bytes"
                )
            return data

        # The first pass checks every file without decoding pixels and settles the output
        # shape, so the array can be allocated once and a bad member fails the import early.
        sizes = set()
        all_grayscale = True
        for info, _ in members:
            size, mode = _inspect_image(read(info), info.filename, max_pixels)
            sizes.add(size)
            all_grayscale = all_grayscale and mode in _GRAYSCALE_MODES
        if image_size is not None:
            width = height = image_size
        elif len(sizes) == 1:
            width, height = next(iter(sizes))
        else:
            listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:5])
            raise DatasetFormatError(
                f"image sizes differ ({listed}{', ...' if len(sizes) > 5 else ''}); "
                "pass image_size to resize them all to one size"
            )
        if width < MIN_IMAGE_SIDE or height < MIN_IMAGE_SIDE:
            raise DatasetFormatError(
                f"images are {width}x{height}; both sides must be at least {MIN_IMAGE_SIDE}"
            )
        out_channels = channels or (1 if all_grayscale else 3)
        decoded_bytes = len(members) * width * height * out_channels
        if decoded_bytes > limits.max_total_bytes:
            raise DatasetFormatError(
                f"{len(members)} images of {width}x{height}x{out_channels} take {decoded_bytes} "
                f"bytes; the limit is {limits.max_total_bytes}; pass a smaller image_size"
            )

        pixels = np.empty((len(members), height, width, out_channels), dtype=np.uint8)
        total = len(members)
        if progress is not None:
            progress(0, total)
        for index, (info, _) in enumerate(members):
            image = _decode_image(read(info), info.filename, max_pixels)
            image = _convert_image(image, info.filename, out_channels)
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            pixels[index] = np.asarray(image, dtype=np.uint8).reshape(height, width, out_channels)
            if progress is not None:
                progress(index + 1, total)

    splits = {split: (pixels[order[split]], labels[order[split]]) for split in SPLITS}
    files = {split: [names[i] for i in order[split]] for split in SPLITS}
    return DatasetArrays(
        splits=splits,
        class_names=class_names,
        extra={"format": "image-folder-zip", "files": files},
    )


# --------------------------------------------------------------------------------------------
# Small helpers


def sha256_of(source: Source) -> str:
    """Hex SHA-256 of a file's whole content.

    A file object is hashed from its start and left at the position it had before.
    """
    return _hexdigest(source, hashlib.sha256())


def md5_of(source: Source) -> str:
    """Hex MD5 of a file's whole content (the checksum MedMNIST publishes), as :func:`sha256_of`."""
    return _hexdigest(source, hashlib.md5())  # noqa: S324 - compared with published MD5s only


def _hexdigest(source: Source, digest) -> str:
    if _is_file_object(source):
        position = source.tell()
        source.seek(0)
        try:
            while chunk := source.read(_HASH_CHUNK):
                digest.update(chunk)
        finally:
            source.seek(position)
    else:
        with open(source, "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def sample_grid(
    arrays: DatasetArrays, split: str = "train", per_class: int = 8, seed: int = 0
) -> dict[int, list[int]]:
    """Indices of up to ``per_class`` randomly chosen images of each class in ``split``.

    Every class id appears as a key (with an empty list when the split has none of it); the
    indices of each class are sorted. The same seed always gives the same choice.
    """
    rng = np.random.default_rng(seed)
    labels = arrays.labels(split)
    grid = {}
    for class_id in range(arrays.num_classes):
        candidates = np.flatnonzero(labels == class_id)
        count = min(per_class, len(candidates))
        chosen = rng.choice(candidates, size=count, replace=False) if count else candidates
        grid[class_id] = sorted(int(index) for index in chosen)
    return grid


def image_to_png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of one ``uint8`` image of shape ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W)``."""
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8. Received: dtype={image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"image must have shape (H, W, 1) or (H, W, 3). Received: shape={image.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()

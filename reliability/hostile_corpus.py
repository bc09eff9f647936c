"""A corpus of hostile uploads, what each upload endpoint must answer, and a memory check.

Every file is generated here, in-process (Pillow, numpy, zipfile, h5py through Keras), and stays
small on disk: the bombs are compressed streams that would expand to gigabytes, built from one
compressed block repeated, so writing them costs neither time nor memory. ``manifest.json`` lists,
for each file, its category, the endpoints it is sent to, the name it is uploaded under and what
the platform must do with it.

Usage::

    .venv/bin/python -m reliability.hostile_corpus OUT_DIR              # write files + manifest.json
    .venv/bin/python -m reliability.hostile_corpus --measure-memory OUT_DIR
    .venv/bin/python -m reliability.hostile_corpus --table reliability/results/hostile_input.json

``--measure-memory`` feeds every file, in this fresh process, through the code a request or a
worker runs on it (image decoding for classification, dataset import, batch input reading) with
the platform's default limits, and prints the peak resident memory above the baseline after
imports as JSON. It imports :mod:`medml` only, never Django or TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import pickle
import resource
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

PREDICTIONS = "predictions"
DATASETS = "datasets"
INFERENCE = "inference-jobs"
ENDPOINT_URLS = {
    PREDICTIONS: "/api/v1/predictions/",
    DATASETS: "/api/v1/datasets/",
    INFERENCE: "/api/v1/inference-jobs/",
}
ARCHIVES = (DATASETS, INFERENCE)
EVERYWHERE = (PREDICTIONS, DATASETS, INFERENCE)

# The limits the corpus is built against: the platform's defaults (see the README), except the
# size of dataset and batch uploads, which the test lowers from 512 MiB to 20 MiB (the same
# comparison, with an oversize file of 20 MiB rather than 512 MiB).
UPLOAD_LIMIT_BYTES = 10 * 1024 * 1024  # PREDICTION_MAX_BYTES
ARCHIVE_UPLOAD_LIMIT_BYTES = 20 * 1024 * 1024  # DATASET_UPLOAD_MAX_BYTES, as the test sets it
PREDICTION_MAX_FILES = 16
DJANGO_MAX_NUMBER_FILES = 64  # DATA_UPLOAD_MAX_NUMBER_FILES
MAX_PIXELS = 4096 * 4096
MAX_MEMBERS = 200_000
MAX_TOTAL_BYTES = 2 * 1024**3
MAX_MEMBER_BYTES = 64 * 1024**2
# The memory a worker may take above its baseline while it rejects the whole corpus.
MEMORY_CAP_MIB = 512

# What the tests' models take: 28x28 RGB, three classes (as tests/factories.py makes them).
IMAGE_SHAPE = (28, 28, 3)
CLASS_NAMES = ("adenoma", "carcinoma", "normal")
_SPLITS = ("train", "val", "test")
_BLOCK = 1024 * 1024


@dataclass
class Entry:
    """One corpus file and what must happen to it.

    Attributes:
        file: Its name in the corpus folder.
        category: The kind of attack (pixel bomb, zip slip, polyglot, ...).
        endpoints: Which of ``predictions``, ``datasets`` and ``inference-jobs`` it is sent to.
        expected: What the platform must do, in words.
        upload_name: The file name it is uploaded under, when that is itself the attack.
        copies: How many times it is attached to one request (too many files).
        accepted: Endpoints where accepting it (with a warning) is the documented decision.
    """

    file: str
    category: str
    endpoints: tuple[str, ...]
    expected: str
    upload_name: str | None = None
    copies: int = 1
    accepted: tuple[str, ...] = ()
    size_bytes: int = 0

    @property
    def sent_name(self) -> str:
        return self.upload_name if self.upload_name is not None else self.file


@dataclass
class _Spec:
    entry: Entry
    build: Callable[[], bytes] = field(repr=False)


# --- building blocks ------------------------------------------------------------------------------


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _encode(array_or_image, fmt: str = "PNG", **options) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _valid_png(seed: int = 0) -> bytes:
    return _encode(_rng(seed).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(
    width: int, height: int, bit_depth: int, colour_type: int, idat: bytes, extra_chunks: bytes = b""
) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + extra_chunks
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


@dataclass(frozen=True)
class _Stream:
    """A raw deflate stream, the size it expands to and the checksum of that (CRC-32 or Adler-32)."""

    data: bytes
    size: int
    checksum: int


def _deflate_zeros(zeros: int, prefix: bytes = b"", checksum=zlib.crc32) -> _Stream:
    """``prefix`` followed by ``zeros`` zero bytes, as raw deflate, without holding them in memory.

    One megabyte of zeros is compressed once and its block repeated: after a full flush a block
    refers to nothing before it, so the copies form one valid stream.
    """
    block = b"\0" * _BLOCK
    head = prefix + b"\0" * min(zeros, max(0, _BLOCK - len(prefix)))
    first = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [first.compress(head) + first.flush(zlib.Z_FULL_FLUSH)]
    value = checksum(head)
    left = zeros - (len(head) - len(prefix))
    repeat = zlib.compressobj(9, zlib.DEFLATED, -15)
    full_block = repeat.compress(block) + repeat.flush(zlib.Z_FULL_FLUSH)
    while left >= _BLOCK:
        parts.append(full_block)
        value = checksum(block, value)
        left -= _BLOCK
    last = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts.append(last.compress(b"\0" * left) + last.flush())
    value = checksum(b"\0" * left, value)
    return _Stream(b"".join(parts), len(prefix) + zeros, value)


def _zlib_zeros(zeros: int) -> bytes:
    stream = _deflate_zeros(zeros, checksum=zlib.adler32)
    return b"\x78\xda" + stream.data + struct.pack(">I", stream.checksum)


@dataclass(frozen=True)
class _RawMember:
    name: str
    stream: _Stream
    method: int = zipfile.ZIP_DEFLATED
    external_attr: int = 0
    create_system: int = 0


def _raw_zip(members: list[_RawMember], *, shared_local: bool = False) -> bytes:
    """A zip written byte by byte, for members whose compressed data is already made.

    ``shared_local`` points every directory entry at the first member's data (the overlapping
    entries of a "non-recursive" zip bomb).
    """
    out = io.BytesIO()
    offsets = []
    for index, member in enumerate(members):
        if shared_local and index:
            offsets.append(offsets[0])
            continue
        offsets.append(out.tell())
        name = member.name.encode("utf-8")
        out.write(
            struct.pack(
                "<4s5H3L2H",
                b"PK\x03\x04",
                20,
                0x800,
                member.method,
                0,
                0x21,
                member.stream.checksum,
                len(member.stream.data),
                member.stream.size,
                len(name),
                0,
            )
        )
        out.write(name)
        out.write(member.stream.data)
    directory_start = out.tell()
    for member, offset in zip(members, offsets, strict=True):
        name = member.name.encode("utf-8")
        out.write(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                (member.create_system << 8) | 20,
                20,
                0x800,
                member.method,
                0,
                0x21,
                member.stream.checksum,
                len(member.stream.data),
                member.stream.size,
                len(name),
                0,
                0,
                0,
                0,
                member.external_attr,
                offset,
            )
        )
        out.write(name)
    directory_size = out.tell() - directory_start
    count = len(members)
    if count > 0xFFFF:  # ZIP64 end records carry the count; the classic one says "see ZIP64"
        record_offset = out.tell()
        out.write(
            struct.pack(
                "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, directory_size, directory_start
            )
        )
        out.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, record_offset, 1))
        count = 0xFFFF
    out.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, directory_size, directory_start, 0))
    return out.getvalue()


def _stored(data: bytes) -> _Stream:
    return _Stream(data, len(data), zlib.crc32(data))


def _zip(
    members: dict[str, bytes],
    *,
    symlinks: dict[str, str] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = 0o120777 << 16  # a symbolic link, rwxrwxrwx
            archive.writestr(info, target)
    return buffer.getvalue()


def _class_members(per_class: int = 4) -> dict[str, bytes]:
    return {
        f"{name}/img{i}.png": _valid_png(10 * c + i)
        for c, name in enumerate(CLASS_NAMES)
        for i in range(per_class)
    }


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _both_layouts(images: np.ndarray, labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The arrays under both batch (``images``) and dataset (``train_images``, ...) keys."""
    labels = labels if labels is not None else np.zeros((len(images), 1), np.uint8)
    arrays = {"images": images}
    for split in _SPLITS:
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels
    return arrays


def _npz(arrays: dict[str, np.ndarray], *, allow_pickle: bool = False) -> bytes:
    members = {f"{key}.npy": _npy(value) for key, value in arrays.items()}
    if not allow_pickle:
        assert all(value.dtype != object for value in arrays.values())
    return _zip(members)


def _valid_npz() -> bytes:
    """A file every archive endpoint accepts: 12 images with labels of all three classes."""
    images = _rng(3).integers(0, 256, (12, *IMAGE_SHAPE), dtype=np.uint8)
    labels = (np.arange(12) % 3).astype(np.uint8).reshape(-1, 1)
    return _npz(_both_layouts(images, labels))


class _Payload:
    """Pickles as a call to ``os.system``: loading it would run a shell command."""

    def __reduce__(self):
        return (os.system, ("echo hostile-pickle-ran",))


def _lambda_model(path: Path) -> bytes:
    """A small Keras model whose Lambda layer would run ``os.system`` when called."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    inputs = keras.Input(IMAGE_SHAPE)
    # With its output shape given, Keras never calls the function while building or saving.
    hidden = keras.layers.Lambda(
        lambda x: (__import__("os").system("echo hostile-lambda-ran"), x)[1], output_shape=IMAGE_SHAPE
    )(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(len(CLASS_NAMES), activation="softmax")(hidden)
    keras.Model(inputs, outputs).save(path)
    return path.read_bytes()


# --- the corpus -----------------------------------------------------------------------------------


def _pixel_bomb_png() -> bytes:
    return _png(100_000, 100_000, 8, 2, zlib.compress(b"\0" * 64))


def _pixel_bomb_tiff() -> bytes:
    data = bytearray(_encode(Image.new("L", (8, 8)), "TIFF"))
    # Patch the ImageWidth (256) and ImageLength (257) entries of the first directory.
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        (tag,) = struct.unpack_from("<H", data, at)
        if tag in (256, 257):
            struct.pack_into("<HHII", data, at, tag, 4, 1, 100_000)
    return bytes(data)


def _pixel_bomb_bmp() -> bytes:
    data = bytearray(_encode(Image.new("RGB", (8, 8)), "BMP"))
    struct.pack_into("<ii", data, 18, 50_000, 50_000)
    return bytes(data)


def _pixel_bomb_gif() -> bytes:
    data = bytearray(_encode(Image.new("L", (8, 8)), "GIF"))
    struct.pack_into("<HH", data, 6, 65_535, 65_535)
    return bytes(data)


def _decompression_bomb_png() -> bytes:
    # 1-bit, 32768 x 32768: 128 MiB of rows (a billion pixels) in about 130 KB.
    side = 32_768
    return _png(side, side, 1, 0, _zlib_zeros(side * (1 + side // 8)))


def _ztxt_bomb_png() -> bytes:
    text = b"Comment\0\0" + _zlib_zeros(64 * 1024 * 1024)
    return _png(28, 28, 8, 0, zlib.compress(b"\0" * (29 * 28)), extra_chunks=_png_chunk(b"zTXt", text))


def _zip_bomb_member() -> bytes:
    members = [_RawMember(f"{name}/img0.png", _stored(_valid_png(i))) for i, name in enumerate(CLASS_NAMES)]
    members.append(_RawMember("adenoma/bomb.png", _deflate_zeros(256 * 1024**2)))
    return _raw_zip(members)


def _zip_bomb_overlapping() -> bytes:
    stream = _deflate_zeros(48 * 1024 * 1024)
    members = [_RawMember(f"{CLASS_NAMES[i % 3]}/img{i}.png", stream) for i in range(48)]
    return _raw_zip(members, shared_local=True)


def _zip_bomb_nested() -> bytes:
    inner = _raw_zip([_RawMember(f"layer{i}.png", _deflate_zeros(16 * 1024 * 1024)) for i in range(8)])
    middle = _zip({f"inner{i}.zip": inner for i in range(8)})
    return _zip({f"{name}/nested{i}.zip": middle for i, name in enumerate(CLASS_NAMES)})


def _zip_many_members() -> bytes:
    empty = _stored(b"")
    return _raw_zip(
        [_RawMember(f"{i:x}.png", empty, method=zipfile.ZIP_STORED) for i in range(MAX_MEMBERS + 1)]
    )


def _npz_bomb() -> bytes:
    count = (MAX_TOTAL_BYTES + _BLOCK) // math.prod(IMAGE_SHAPE) + 1
    header = _npy_header((count, *IMAGE_SHAPE))
    stream = _deflate_zeros(count * math.prod(IMAGE_SHAPE), prefix=header)
    return _raw_zip([_RawMember("images.npy", stream)])


def _with_member(name: str, data: bytes) -> bytes:
    return _zip({**_class_members(), name: data})


def _png_html_polyglot() -> bytes:
    return _valid_png() + b"<html><body><script>alert(document.domain)</script></body></html>\n"


def _png_script_text() -> bytes:
    array = _rng(1).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in array)
    text = _png_chunk(b"tEXt", b"Comment\0<script>fetch('/api/v1/auth/token/')</script>")
    return _png(28, 28, 8, 2, zlib.compress(raw), extra_chunks=text)


def _jpeg_html_comment() -> bytes:
    return _encode(
        _rng(2).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8),
        "JPEG",
        comment=b"<html><body><script>alert(1)</script></body></html>",
    )


def _gif_js_polyglot() -> bytes:
    return b"GIF89a/*\x1c\x00\x1c\x00\x00\x00\x00*/=alert(document.domain);//" + b"\0" * 32 + b";"


def _png_zip_polyglot() -> bytes:
    return _valid_png() + _zip(_class_members())


def _svg_script() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28">'
        b"<script>alert(document.cookie)</script><rect width='28' height='28'/></svg>\n"
    )


def _html_page() -> bytes:
    return b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>\n"


def _truncated_png() -> bytes:
    data = _encode(_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    data = _encode(_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
    return data[: len(data) // 2]


def _cmyk_jpeg() -> bytes:
    return _encode(Image.new("CMYK", (28, 28), (0, 255, 255, 0)), "JPEG")


def _lab_tiff() -> bytes:
    return _encode(Image.new("LAB", (28, 28), (50, 20, 20)), "TIFF")


def _sixteen_bit_png() -> bytes:
    # 12-bit data in a 16-bit file, as many X-ray detectors write it.
    return _encode(Image.fromarray(_rng(6).integers(0, 4096, (28, 28), dtype=np.uint16)))


def _palette_transparent_png() -> bytes:
    image = Image.fromarray(_rng(7).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)).quantize(16)
    return _encode(image, transparency=0)


def _one_bit_png() -> bytes:
    return _encode(Image.fromarray(_rng(8).integers(0, 2, (28, 28), dtype=np.uint8) * 255).convert("1"))


def _multi_frame_tiff() -> bytes:
    frames = [Image.fromarray(_rng(i).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)) for i in range(3)]
    return _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])


def _animated_png() -> bytes:
    frames = [Image.fromarray(_rng(i).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)) for i in range(3)]
    return _encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_rng(i).integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)) for i in range(3)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _float_nan_tiff() -> bytes:
    values = _rng(9).random((28, 28)).astype(np.float32)
    values[3, 3], values[4, 4] = np.nan, np.inf
    return _encode(Image.fromarray(values, mode="F"), "TIFF")


def _npz_pickled_objects() -> bytes:
    return _zip(
        {
            "images.npy": _npy(np.array([_Payload()], dtype=object)),
            "train_images.npy": _npy(np.array([_Payload()], dtype=object)),
        }
    )


def _npz_float_images() -> bytes:
    return _npz(_both_layouts(_rng(10).random((6, *IMAGE_SHAPE)).astype(np.float32)))


def _npz_wrong_shape() -> bytes:
    return _npz(_both_layouts(np.zeros((6, 5), np.uint8)))


def _npz_huge_declared_shape() -> bytes:
    forged = _npy_header((10**9, *IMAGE_SHAPE)) + b"\0" * 4096
    return _zip({"images.npy": forged, "train_images.npy": forged})


def _pickle_named_npz() -> bytes:
    return pickle.dumps(_Payload())


def _bare_npy() -> bytes:
    return _npy(np.zeros((4, *IMAGE_SHAPE), np.uint8))


def _oversize_png() -> bytes:
    base = _valid_png()
    filler = UPLOAD_LIMIT_BYTES + 1 - len(base) - 12
    chunk = _png_chunk(b"prVt", _rng(11).integers(0, 256, filler, dtype=np.uint8).tobytes())
    return base[:-12] + chunk + base[-12:]  # before IEND


def _oversize_npz() -> bytes:
    images = _npy(np.zeros((16, *IMAGE_SHAPE), np.uint8))
    without_padding = _raw_zip(
        [
            _RawMember("images.npy", _stored(images), zipfile.ZIP_STORED),
            _RawMember("padding.bin", _stored(b""), zipfile.ZIP_STORED),
        ]
    )
    padding = b"\0" * (ARCHIVE_UPLOAD_LIMIT_BYTES + 1 - len(without_padding))
    return _raw_zip(
        [
            _RawMember("images.npy", _stored(images), zipfile.ZIP_STORED),
            _RawMember("padding.bin", _stored(padding), zipfile.ZIP_STORED),
        ]
    )


HOSTILE_NAMES = {
    "path_traversal": "../../../../etc/cron.d/medplatform",
    "nul_byte": "report.exe\x00",
    "very_long": "a" * 300,
    "rtl_override": "scan\u202egnp",
    "script_tag": "<script>alert(document.cookie)</script>",
}


def _specs(work: Path) -> list[_Spec]:
    reject = "rejected (4xx) with a reason"
    specs = [
        # Pixel and decompression bombs: refused from the header, before any pixel is decoded.
        _Spec(
            Entry("pixel_bomb.png", "pixel bomb", (PREDICTIONS,), reject + ": 100000x100000 declared"),
            _pixel_bomb_png,
        ),
        _Spec(
            Entry("pixel_bomb.tif", "pixel bomb", (PREDICTIONS,), reject + ": 100000x100000 declared"),
            _pixel_bomb_tiff,
        ),
        _Spec(
            Entry("pixel_bomb.bmp", "pixel bomb", (PREDICTIONS,), reject + ": 50000x50000 declared"),
            _pixel_bomb_bmp,
        ),
        _Spec(
            Entry("pixel_bomb.gif", "pixel bomb", (PREDICTIONS,), reject + ": GIF is not accepted"),
            _pixel_bomb_gif,
        ),
        _Spec(
            Entry(
                "decompression_bomb.png",
                "decompression bomb",
                (PREDICTIONS,),
                reject + ": 1-bit 32768x32768 (128 MiB of rows in ~130 KB)",
            ),
            _decompression_bomb_png,
        ),
        _Spec(
            Entry(
                "decompression_bomb_in_zip.zip",
                "decompression bomb",
                ARCHIVES,
                reject + ": a member is a 32768x32768 PNG",
            ),
            lambda: _with_member("normal/bomb.png", _decompression_bomb_png()),
        ),
        _Spec(
            Entry(
                "ztxt_bomb.png",
                "decompression bomb",
                (PREDICTIONS,),
                reject + ": a zTXt chunk expanding to 64 MiB",
            ),
            _ztxt_bomb_png,
        ),
        # Zip bombs.
        _Spec(
            Entry(
                "zip_bomb_member.zip",
                "zip bomb",
                ARCHIVES,
                reject + ": one member declares 256 MiB (ratio ~1000:1)",
            ),
            _zip_bomb_member,
        ),
        _Spec(
            Entry(
                "zip_bomb_overlapping.zip",
                "zip bomb",
                ARCHIVES,
                reject + ": 48 entries share one 48 MiB stream (2.25 GiB declared)",
            ),
            _zip_bomb_overlapping,
        ),
        _Spec(
            Entry(
                "zip_bomb_nested.zip",
                "zip bomb",
                ARCHIVES,
                reject + ": zips inside zips are not images; nothing is opened recursively",
            ),
            _zip_bomb_nested,
        ),
        _Spec(
            Entry(
                "zip_many_members.zip",
                "many members",
                ARCHIVES,
                reject + f": {MAX_MEMBERS + 1} members, one past the limit",
            ),
            _zip_many_members,
        ),
        _Spec(
            Entry(
                "npz_bomb.npz",
                "zip bomb",
                ARCHIVES,
                reject + ": an array of 2 GiB + 1 MiB of zeros in ~2 MB (past the 2 GiB limit)",
            ),
            _npz_bomb,
        ),
        # Members that would escape the archive.
        _Spec(
            Entry("zip_slip.zip", "zip slip", ARCHIVES, reject + ": member ../../../../tmp/zip-slip.png"),
            lambda: _with_member("../../../../tmp/zip-slip.png", _valid_png()),
        ),
        _Spec(
            Entry("zip_slip_backslash.zip", "zip slip", ARCHIVES, reject + ": member ..\\..\\zip-slip.png"),
            lambda: _with_member("..\\..\\zip-slip.png", _valid_png()),
        ),
        _Spec(
            Entry(
                "zip_absolute_path.zip", "absolute member", ARCHIVES, reject + ": member /etc/cron.d/x.png"
            ),
            lambda: _with_member("/etc/cron.d/x.png", _valid_png()),
        ),
        _Spec(
            Entry("zip_drive_letter.zip", "absolute member", ARCHIVES, reject + ": member C:/Windows/x.png"),
            lambda: _with_member("C:/Windows/x.png", _valid_png()),
        ),
        _Spec(
            Entry(
                "zip_symlink.zip",
                "symlink member",
                ARCHIVES,
                reject + ": member normal/link.png -> /etc/passwd",
            ),
            lambda: _zip(_class_members(), symlinks={"normal/link.png": "/etc/passwd"}),
        ),
        # Polyglots and markup.
        _Spec(
            Entry("png_html_polyglot.png", "polyglot", (PREDICTIONS,), reject + ": HTML after IEND"),
            _png_html_polyglot,
        ),
        _Spec(
            Entry("png_html_polyglot_in_zip.zip", "polyglot", ARCHIVES, reject + ": a member is a PNG+HTML"),
            lambda: _with_member("normal/polyglot.png", _png_html_polyglot()),
        ),
        _Spec(
            Entry("png_script_text_chunk.png", "polyglot", (PREDICTIONS,), reject + ": <script> in tEXt"),
            _png_script_text,
        ),
        _Spec(
            Entry("jpeg_html_comment.jpg", "polyglot", (PREDICTIONS,), reject + ": HTML in a JPEG comment"),
            _jpeg_html_comment,
        ),
        _Spec(
            Entry("gif_javascript_polyglot.gif", "polyglot", (PREDICTIONS,), reject + ": GIF/JavaScript"),
            _gif_js_polyglot,
        ),
        _Spec(
            Entry(
                "png_zip_polyglot.zip",
                "polyglot",
                EVERYWHERE,
                reject + ": a PNG with a zip of class folders appended",
            ),
            _png_zip_polyglot,
        ),
        _Spec(Entry("svg_script.svg", "SVG", (PREDICTIONS,), reject + ": SVG is not accepted"), _svg_script),
        _Spec(Entry("svg_script_named.png", "SVG", (PREDICTIONS,), reject + ": SVG named .png"), _svg_script),
        _Spec(
            Entry("html_named.png", "HTML as image", (PREDICTIONS,), reject + ": HTML named .png"), _html_page
        ),
        # Truncated files.
        _Spec(Entry("truncated.png", "truncated image", (PREDICTIONS,), reject), _truncated_png),
        _Spec(Entry("truncated.jpg", "truncated image", (PREDICTIONS,), reject), _truncated_jpeg),
        _Spec(
            Entry("truncated_png_in_zip.zip", "truncated image", ARCHIVES, reject),
            lambda: _with_member("normal/truncated.png", _truncated_png()),
        ),
        # Modes.
        _Spec(
            Entry(
                "cmyk.jpg",
                "wrong mode",
                (PREDICTIONS,),
                reject + ": CMYK needs the file's colour profile to become RGB",
            ),
            _cmyk_jpeg,
        ),
        _Spec(
            Entry("cmyk_in_zip.zip", "wrong mode", ARCHIVES, reject + ": a member is CMYK"),
            lambda: _with_member("normal/cmyk.jpg", _cmyk_jpeg()),
        ),
        _Spec(Entry("lab.tif", "wrong mode", (PREDICTIONS,), reject + ": CIE LAB"), _lab_tiff),
        _Spec(
            Entry("float_nan.tif", "wrong mode", (PREDICTIONS,), reject + ": 32-bit float with NaN/inf"),
            _float_nan_tiff,
        ),
        _Spec(
            Entry("multi_frame.tif", "wrong mode", (PREDICTIONS,), reject + ": 3 pages"), _multi_frame_tiff
        ),
        _Spec(
            Entry("multi_frame_in_zip.zip", "wrong mode", ARCHIVES, reject + ": a member has 3 pages"),
            lambda: _with_member("normal/pages.tif", _multi_frame_tiff()),
        ),
        _Spec(
            Entry("animated.png", "wrong mode", (PREDICTIONS,), reject + ": APNG of 3 frames"), _animated_png
        ),
        _Spec(
            Entry("animated.gif", "wrong mode", (PREDICTIONS,), reject + ": GIF is not accepted"),
            _animated_gif,
        ),
        _Spec(
            Entry(
                "sixteen_bit.png",
                "wrong mode",
                (PREDICTIONS,),
                "accepted with a warning: scaled to 8 bits (a 12-bit image comes out dark)",
                accepted=(PREDICTIONS,),
            ),
            _sixteen_bit_png,
        ),
        _Spec(
            Entry(
                "palette_transparency.png",
                "wrong mode",
                (PREDICTIONS,),
                "accepted with a warning: transparency ignored",
                accepted=(PREDICTIONS,),
            ),
            _palette_transparent_png,
        ),
        _Spec(
            Entry(
                "one_bit.png",
                "wrong mode",
                (PREDICTIONS,),
                "accepted: black and white becomes 0 and 255 grayscale",
                accepted=(PREDICTIONS,),
            ),
            _one_bit_png,
        ),
        # Arrays.
        _Spec(
            Entry(
                "npz_pickled_objects.npz",
                "npz objects",
                ARCHIVES,
                reject + ": object arrays that would unpickle os.system",
            ),
            _npz_pickled_objects,
        ),
        _Spec(
            Entry("npz_float_images.npz", "npz dtype", ARCHIVES, reject + ": float32 images"),
            _npz_float_images,
        ),
        _Spec(
            Entry("npz_wrong_shape.npz", "npz shape", ARCHIVES, reject + ": images of shape (6, 5)"),
            _npz_wrong_shape,
        ),
        _Spec(
            Entry(
                "npz_huge_declared_shape.npz",
                "npz shape",
                ARCHIVES,
                reject + ": header declares (10^9, 28, 28, 3), 2.2 TB, in 4 KB",
            ),
            _npz_huge_declared_shape,
        ),
        _Spec(
            Entry("pickle_named.npz", "npz objects", ARCHIVES, reject + ": a pickle, not an archive"),
            _pickle_named_npz,
        ),
        _Spec(Entry("bare_array_named.npz", "npz shape", ARCHIVES, reject + ": a bare .npy"), _bare_npy),
        # Models with code in them.
        _Spec(
            Entry("lambda_layer.keras", "model with Lambda", EVERYWHERE, reject + ": not an accepted type"),
            lambda: _lambda_model(work / "lambda_layer.keras"),
        ),
        _Spec(
            Entry("lambda_layer.h5", "model with Lambda", EVERYWHERE, reject + ": not an accepted type"),
            lambda: _lambda_model(work / "lambda_layer.h5"),
        ),
        _Spec(
            Entry(
                "lambda_layer_keras_named.zip",
                "model with Lambda",
                ARCHIVES,
                reject + ": a .keras archive holds no images",
            ),
            lambda: (work / "lambda_layer.keras").read_bytes(),
        ),
        _Spec(
            Entry(
                "lambda_layer_keras_named.npz",
                "model with Lambda",
                ARCHIVES,
                reject + ": a .keras archive holds no arrays",
            ),
            lambda: (work / "lambda_layer.keras").read_bytes(),
        ),
        # Sizes and counts.
        _Spec(
            Entry(
                "oversize.png",
                "oversize upload",
                (PREDICTIONS,),
                reject + f": {UPLOAD_LIMIT_BYTES + 1} bytes, one past the limit",
            ),
            _oversize_png,
        ),
        _Spec(
            Entry(
                "oversize.npz",
                "oversize upload",
                ARCHIVES,
                reject + f": {ARCHIVE_UPLOAD_LIMIT_BYTES + 1} bytes, one past the limit",
            ),
            _oversize_npz,
        ),
        _Spec(
            Entry(
                "too_many_files.png",
                "too many files",
                (PREDICTIONS,),
                reject + f": {PREDICTION_MAX_FILES + 1} images in one request",
                copies=PREDICTION_MAX_FILES + 1,
            ),
            _valid_png,
        ),
        _Spec(
            Entry(
                "far_too_many_files.png",
                "too many files",
                (PREDICTIONS,),
                reject + f": {DJANGO_MAX_NUMBER_FILES + 1} files, past Django's limit",
                copies=DJANGO_MAX_NUMBER_FILES + 1,
            ),
            _valid_png,
        ),
    ]
    for label, stem in HOSTILE_NAMES.items():
        specs.append(
            _Spec(
                Entry(
                    f"name_{label}.png",
                    "hostile file name",
                    (PREDICTIONS,),
                    reject + f": uploaded as {stem!r}.png",
                    upload_name=stem + ".png",
                ),
                _valid_png,
            )
        )
        specs.append(
            _Spec(
                Entry(
                    f"name_{label}.npz",
                    "hostile file name",
                    ARCHIVES,
                    reject + f": uploaded as {stem!r}.npz",
                    upload_name=stem + ".npz",
                ),
                _valid_npz,
            )
        )
    return specs


def corpus_entries() -> list[Entry]:
    """Every corpus entry, without generating any file (for test parametrisation)."""
    return [spec.entry for spec in _specs(Path("unused"))]


def generate(out_dir: str | os.PathLike) -> list[Entry]:
    """Write every corpus file and ``manifest.json`` into ``out_dir``; return the entries."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    entries = []
    for spec in _specs(work):
        data = spec.build()
        (out / spec.entry.file).write_bytes(data)
        spec.entry.size_bytes = len(data)
        entries.append(spec.entry)
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()
    manifest = {
        "limits": {
            "upload_bytes": UPLOAD_LIMIT_BYTES,
            "archive_upload_bytes": ARCHIVE_UPLOAD_LIMIT_BYTES,
            "prediction_max_files": PREDICTION_MAX_FILES,
            "django_max_number_files": DJANGO_MAX_NUMBER_FILES,
            "max_pixels": MAX_PIXELS,
            "max_members": MAX_MEMBERS,
            "max_total_bytes": MAX_TOTAL_BYTES,
            "max_member_bytes": MAX_MEMBER_BYTES,
        },
        "entries": [asdict(entry) for entry in entries],
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=True))
    return entries


def load_manifest(out_dir: str | os.PathLike) -> list[Entry]:
    """The entries of a generated corpus."""
    data = json.loads((Path(out_dir) / "manifest.json").read_text())
    return [
        Entry(**{**entry, "endpoints": tuple(entry["endpoints"]), "accepted": tuple(entry["accepted"])})
        for entry in data["entries"]
    ]


# --- memory ---------------------------------------------------------------------------------------


def _max_rss_kib() -> int:
    """This process's peak resident memory in KiB.

    Linux carries ``ru_maxrss`` over from the process that forked this one (a test runner holding
    a gigabyte keeps that figure through ``exec``), so the peak of this program's own memory,
    ``VmHWM`` in ``/proc/self/status``, is read where it exists; ``ru_maxrss`` elsewhere.
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def measure_memory(out_dir: str | os.PathLike) -> dict:
    """Feed every corpus file through the code that handles it; report peak memory and outcomes.

    Run in a fresh process: the peak resident memory only grows, so the baseline is taken after
    the imports and whatever the corpus makes the process allocate shows above it.
    """
    from medml import batch, dataset_io, images

    preprocessing = {"crop": "center 200x200 of the 360x363 source", "resize": "bilinear", "channels": 3}
    limits = dataset_io.ImportLimits(
        max_members=MAX_MEMBERS,
        max_total_bytes=MAX_TOTAL_BYTES,
        max_member_bytes=MAX_MEMBER_BYTES,
        max_image_pixels=MAX_PIXELS,
    )
    errors = (images.ImageInputError, dataset_io.DatasetFormatError, batch.BatchInputError)
    baseline = _max_rss_kib()
    outcomes = []
    for entry in load_manifest(out_dir):
        path = Path(out_dir) / entry.file
        for endpoint in entry.endpoints:
            outcome = "accepted"
            try:
                if endpoint == PREDICTIONS:
                    data = path.read_bytes()
                    if len(data) > UPLOAD_LIMIT_BYTES:
                        raise images.ImageInputError("over the upload limit")
                    image = images.decode_upload(data, max_pixels=MAX_PIXELS, max_bytes=UPLOAD_LIMIT_BYTES)
                    images.to_model_input(image, height=28, width=28, channels=3, preprocessing=preprocessing)
                elif path.stat().st_size > ARCHIVE_UPLOAD_LIMIT_BYTES:
                    raise dataset_io.DatasetFormatError("over the upload limit")
                elif endpoint == DATASETS:
                    with open(path, "rb") as handle:
                        if entry.file.endswith(".npz"):
                            dataset_io.load_medmnist_npz(handle, class_names=list(CLASS_NAMES), limits=limits)
                        elif entry.file.endswith(".zip"):
                            dataset_io.load_image_folder_zip(handle, limits=limits)
                        else:
                            raise dataset_io.DatasetFormatError("unsupported file type")
                else:
                    with open(path, "rb") as handle:
                        if entry.file.endswith(".npz"):
                            batch.read_npz(handle, shape=IMAGE_SHAPE, num_classes=3, limits=limits)
                        elif entry.file.endswith(".zip"):
                            batch.read_zip(
                                handle,
                                shape=IMAGE_SHAPE,
                                class_names=list(CLASS_NAMES),
                                preprocessing=preprocessing,
                                limits=limits,
                                max_image_bytes=UPLOAD_LIMIT_BYTES,
                            )
                        else:
                            raise batch.BatchInputError("unsupported file type")
            except errors as exc:
                outcome = f"rejected: {exc}"
            except Exception as exc:  # an unexpected failure is a finding, not a crash of the check
                outcome = f"error: {type(exc).__name__}: {exc}"
            outcomes.append(
                {
                    "file": entry.file,
                    "endpoint": endpoint,
                    "outcome": outcome[:300],
                    "max_rss_above_baseline_mib": round((_max_rss_kib() - baseline) / 1024, 1),
                }
            )
    peak = _max_rss_kib()
    return {
        "baseline_mib": round(baseline / 1024, 1),
        "peak_mib": round(peak / 1024, 1),
        "peak_above_baseline_mib": round((peak - baseline) / 1024, 1),
        "cap_mib": MEMORY_CAP_MIB,
        "outcomes": outcomes,
    }


# --- the results table ----------------------------------------------------------------------------


def markdown_table(results: dict) -> str:
    """The corpus table of a results file written by ``tests/security/test_hostile_input.py``."""
    lines = ["| file | category | endpoint | status | reason |", "|---|---|---|---|---|"]
    for row in results["rows"]:
        reason = row["reason"].replace("\n", " ")
        if len(reason) > 160:
            reason = reason[:157] + "..."
        reason = reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
        lines.append(
            f"| `{row['file']}` | {row['category']} | `{ENDPOINT_URLS[row['endpoint']]}` | "
            f"{row['status']}{' (xfail)' if row.get('xfail') else ''} | {reason} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="corpus folder (or, with --table, a results JSON file)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--measure-memory",
        action="store_true",
        help="process an existing corpus and print peak memory as JSON",
    )
    mode.add_argument("--table", action="store_true", help="print a results file as a Markdown table")
    args = parser.parse_args(argv)
    if args.measure_memory:
        print(json.dumps(measure_memory(args.path)))
    elif args.table:
        print(markdown_table(json.loads(Path(args.path).read_text())))
    else:
        entries = generate(args.path)
        total = sum(entry.size_bytes for entry in entries)
        print(f"wrote {len(entries)} files ({total / 1024**2:.1f} MiB) and manifest.json to {args.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Turning an uploaded image file into what a model takes: safe decoding, then the dataset's path.

Every upload is untrusted. :func:`decode_upload` accepts PNG, JPEG, BMP and TIFF only, checks the
declared size before any pixel is decoded (decompression bombs), verifies the file's structure and
then decodes it fully, so a truncated or damaged file is an error rather than a half-grey image.
It also refuses what is an image and something else at once: files of several images (multi-page
TIFF, animated PNG), colour spaces that cannot be turned into RGB without a colour profile (CMYK,
LAB), data after the end of a PNG, and HTML or script markup anywhere in the file or its metadata
(polyglots a browser or another program could take for a web page).

:func:`to_model_input` produces the ``uint8`` ``(H, W, C)`` array a model of :mod:`medml.architectures`
takes. An image already at the dataset's native size is only converted to the right number of
channels, so a dataset image saved as PNG and uploaded again gives back exactly its array. Larger
images go through the same path the dataset's source images took (a centre crop, a Pillow resize,
channel conversion), as recorded in the dataset's ``source_preprocessing``.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings as py_warnings
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Pillow format name -> the content type the stored file is served with. MPO is what cameras write
# for JPEG files carrying a second, preview image; it decodes as a JPEG.
FORMAT_CONTENT_TYPES: dict[str, str] = {
    "PNG": "image/png",
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
FORMAT_EXTENSIONS: dict[str, str] = {
    "PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif",
}
# Only these decoders are ever tried, whatever the file claims to be.
_PILLOW_PLUGINS = ("PNG", "JPEG", "BMP", "TIFF")
# Pillow modes that convert to 8-bit grayscale or RGB without guessing; others (CMYK, LAB, HSV)
# would need the colour profile the file was made with.
ACCEPTED_MODES = frozenset({
    "1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr",
    "I", "I;16", "I;16B", "I;16L", "I;16N", "F",
})
# Markup that would let a browser or another program take the file for a web page or a script.
# Every pattern is at least six bytes long, so compressed pixel data matches one by chance about
# once in 10^11 bytes. SVG's shorter opening tag is only looked for where content sniffers look.
_MARKUP = re.compile(
    rb"<(?:script|iframe|object|embed)|<(?:html|body)[\s>]|<!doctype\s*html|<\?php|javascript:",
    re.IGNORECASE,
)
_SNIFFED_MARKUP = re.compile(rb"<svg[\s>]|<\?xml-stylesheet", re.IGNORECASE)
_SNIFF_WINDOW = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, zlib.error, Image.DecompressionBombError)

# Warn when the image's width/height ratio differs from the training images' by more than this factor.
ASPECT_RATIO_TOLERANCE = 1.25
# Warn when an image is shrunk by more than this factor relative to the source images the dataset
# was made from (when the dataset records their size) ...
SOURCE_SCALE_TOLERANCE = 4.0
# ... or, when it does not, relative to the native size.
NATIVE_SCALE_TOLERANCE = 32.0

RESAMPLING_FILTERS: dict[str, Image.Resampling] = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

_SIZED_CROP = re.compile(
    r"^center\s+(\d+)\s*x\s*(\d+)(?:\s+of\s+the\s+(\d+)\s*x\s*(\d+)\s+source)?$", re.IGNORECASE
)


class ImageInputError(ValueError):
    """An uploaded file that cannot be classified; the message says why, for the user."""


@dataclass(frozen=True)
class CropSpec:
    """How the dataset's source images were cropped before resizing.

    ``kind`` is ``"none"``, ``"square"`` (the centred square of the shorter side) or ``"sized"``
    (a centred ``crop_size`` taken from a source of ``source_size``, both ``(width, height)``;
    ``source_size`` is ``None`` when the dataset does not say how large its sources were, and the
    crop is then taken at that size from the image itself).
    """

    kind: str
    crop_size: tuple[int, int] | None = None
    source_size: tuple[int, int] | None = None


def parse_crop(text: str | None) -> CropSpec:
    """Parse the ``crop`` entry of a dataset's ``source_preprocessing``.

    Accepted: empty or anything starting with ``"none"``; ``"center square"``;
    ``"center WxH"`` and ``"center WxH of the WxH source"`` (sizes as width x height).

    Raises:
        ValueError: for any other text, naming it.
    """
    text = (text or "").strip()
    if not text or text.lower().startswith("none"):
        return CropSpec("none")
    if text.lower() in ("center square", "centre square"):
        return CropSpec("square")
    match = _SIZED_CROP.match(text)
    if match:
        crop = (int(match.group(1)), int(match.group(2)))
        source = (int(match.group(3)), int(match.group(4))) if match.group(3) else None
        if min(crop) < 1 or (source and (crop[0] > source[0] or crop[1] > source[1])):
            raise ValueError(f"crop larger than its source. Received: crop={text!r}")
        return CropSpec("sized", crop, source)
    raise ValueError(
        "crop must be 'none', 'center square' or 'center WxH [of the WxH source]'. "
        f"Received: crop={text!r}"
    )


def resampling_filter(name: str | None) -> Image.Resampling:
    """The Pillow filter for a ``resize`` entry (``"bilinear"`` when none is recorded)."""
    key = (name or "bilinear").strip().lower()
    if key not in RESAMPLING_FILTERS:
        raise ValueError(
            f"resize must be one of {', '.join(RESAMPLING_FILTERS)}. Received: resize={name!r}"
        )
    return RESAMPLING_FILTERS[key]


# --- decoding --------------------------------------------------------------------------------------


def decode_upload(data: bytes, *, max_pixels: int, max_bytes: int) -> Image.Image:
    """Decode an uploaded image file, refusing anything unsafe or damaged.

    The returned image is fully loaded and keeps Pillow's ``format`` (``"PNG"``, ``"JPEG"``,
    ``"MPO"``, ``"BMP"`` or ``"TIFF"``); an MPO gives its first image.

    Args:
        data: The file's bytes.
        max_pixels: Largest width x height accepted, checked before decoding.
        max_bytes: Largest file accepted.

    Returns:
        A loaded ``PIL.Image.Image``.

    Raises:
        ImageInputError: for an empty or oversized file, an unsupported format, a decompression
            bomb, a truncated or corrupt image, or one refused by :func:`check_image_structure`
            or :func:`check_no_active_content`.
    """
    if not data:
        raise ImageInputError("the file is empty")
    if len(data) > max_bytes:
        raise ImageInputError(f"the file has {len(data)} bytes; the limit is {max_bytes}")
    image = _open(data, max_pixels)
    try:
        check_image_structure(image)
        image.verify()
    except ImageInputError:
        raise
    except _DECODE_ERRORS as exc:
        raise ImageInputError(f"the image is damaged or truncated ({_reason(exc)})") from exc
    finally:
        image.close()
    # verify() leaves the image unusable; decoding needs a fresh parse.
    image = _open(data, max_pixels)
    try:
        image.load()
        check_no_active_content(data, image)
    except ImageInputError:
        image.close()
        raise
    except _DECODE_ERRORS as exc:
        image.close()
        raise ImageInputError(f"the image is damaged or truncated ({_reason(exc)})") from exc
    return image


def check_image_structure(image: Image.Image) -> None:
    """Refuse a file of several images, or a colour space that cannot be converted safely.

    Reads the header only (for TIFF, the chain of page directories), never the pixels.

    Raises:
        ImageInputError: for a multi-page TIFF or animated PNG (which page is the image?) and for
            modes outside :data:`ACCEPTED_MODES`, naming them.
    """
    frames = getattr(image, "n_frames", 1)
    # MPO is a JPEG with a second, preview image: the first is the photograph.
    if frames > 1 and image.format != "MPO":
        raise ImageInputError(
            f"the {image.format} file holds {frames} images; upload one image per file"
        )
    if image.mode not in ACCEPTED_MODES:
        raise ImageInputError(
            f"{image.mode} images are not accepted: their colours cannot be converted to RGB "
            "without the file's colour profile; save the image as RGB or grayscale"
        )


def check_no_active_content(data: bytes, image: Image.Image) -> None:
    """Refuse a file that is also something other than an image (a polyglot).

    ``image`` must be loaded, so that text chunks after a PNG's pixels have been read.

    Raises:
        ImageInputError: for data after the end of a PNG, or HTML/script markup in the bytes,
            the beginning browsers sniff, or the text metadata (PNG text chunks, JPEG comments).
    """
    if image.format == "PNG":
        extra = len(data) - _png_end(data)
        if extra > 0:
            raise ImageInputError(
                f"{extra} bytes follow the end of the PNG image; a plain image is expected"
            )
    texts = [data]
    metadata = dict(image.info)
    metadata.update(getattr(image, "text", None) or {})
    for value in metadata.values():
        if isinstance(value, str):
            texts.append(value.encode("utf-8", "replace"))
        elif isinstance(value, bytes):
            texts.append(value)
    head = data[:_SNIFF_WINDOW]
    if any(_MARKUP.search(text) for text in texts) or _SNIFFED_MARKUP.search(head):
        raise ImageInputError(
            "the file contains HTML or script markup; it is refused as a possible polyglot"
        )


def _png_end(data: bytes) -> int:
    """Offset just past a PNG's IEND chunk, found by walking its chunks (``len(data)`` if none)."""
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        kind = data[offset + 4 : offset + 8]
        offset += 12 + length
        if kind == b"IEND":
            return min(offset, len(data))
    return len(data)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        # Pillow warns (and past twice its own limit, raises) on huge images; the explicit
        # max_pixels check below is the one that decides.
        with py_warnings.catch_warnings():
            py_warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_PILLOW_PLUGINS)
    except Image.DecompressionBombError as exc:
        raise ImageInputError(f"the image is too large to decode safely ({_reason(exc)})") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageInputError("not a PNG, JPEG, BMP or TIFF image") from exc
    except _DECODE_ERRORS as exc:
        raise ImageInputError(f"not a readable image ({_reason(exc)})") from exc
    if image.format not in FORMAT_CONTENT_TYPES:
        image.close()
        raise ImageInputError(
            f"{image.format} images are not accepted; upload PNG, JPEG, BMP or TIFF"
        )
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise ImageInputError(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        image.close()
        raise ImageInputError(
            f"the image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}"
        )
    return image


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# --- to the model's input -----------------------------------------------------------------------


def to_model_input(
    image: Image.Image,
    *,
    height: int,
    width: int,
    channels: int,
    preprocessing: Mapping[str, object] | None = None,
    colour_training: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """The ``uint8`` array a model takes, following the dataset's source path, plus warnings.

    An image at the native ``width`` x ``height`` is not cropped or resized; only its channels are
    converted. A larger or smaller one is cropped as ``preprocessing["crop"]`` says (the crop size
    scaled from the recorded source size to this image), resized with the ``preprocessing["resize"]``
    Pillow filter, then converted: colour to grayscale with Pillow's ``"L"`` (ITU-R 601 luma, as
    MedMNIST made its grayscale sets), grayscale to colour by repeating the channel.

    Args:
        image: A decoded image (see :func:`decode_upload`).
        height: Native image height of the dataset.
        width: Native image width of the dataset.
        channels: ``1`` or ``3``.
        preprocessing: The dataset's ``source_preprocessing`` (``crop``, ``resize``, ``channels``).
        colour_training: Whether the model's training images are in colour: a grey image given
            to a three-channel model is reported only then (a dataset of grey images stored as
            RGB makes three-channel models that know grey images well).

    Returns:
        ``(array, warnings)``: the ``(height, width, channels)`` ``uint8`` array and messages for
        the user about conversions that may make the prediction less reliable.

    Raises:
        ImageInputError: for pixel values that cannot be scaled to 8 bits (NaN, infinite,
            negative or past 16 bits).
        ValueError: for ``channels`` other than 1 or 3 or an unreadable ``preprocessing``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3. Received: channels={channels}")
    preprocessing = dict(preprocessing or {})
    crop = parse_crop(preprocessing.get("crop"))  # type: ignore[arg-type]
    resample = resampling_filter(preprocessing.get("resize"))  # type: ignore[arg-type]
    notes: list[str] = []

    image = exif_oriented(image)
    image, alpha_note = _to_l_or_rgb(image)
    if alpha_note:
        notes.append(alpha_note)
    is_colour = image.mode == "RGB" and not _channels_equal(image)

    if image.size != (width, height):
        notes.extend(_size_warnings(image.size, crop, width, height))
        image = _center_crop(image, crop)
        image = image.resize((width, height), resample=resample)

    if channels == 1:
        if is_colour:
            notes.append(
                "a colour image was given to a grayscale model; it was converted to grayscale"
            )
        array = np.asarray(image.convert("L"), dtype=np.uint8)[..., np.newaxis]
    else:
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 2:
            array = np.repeat(array[..., np.newaxis], 3, axis=-1)
        if colour_training and not is_colour:  # a grey file, or grey pixels saved as RGB
            notes.append(
                "a grayscale image was given to a colour model, which never saw such images in "
                "training"
            )
    return np.ascontiguousarray(array), notes


def exif_oriented(image: Image.Image) -> Image.Image:
    """The image turned upright as its EXIF orientation says (cameras, phones); else unchanged."""
    orientation = image.getexif().get(0x0112, 1) if hasattr(image, "getexif") else 1
    if orientation in (None, 1):
        return image
    return ImageOps.exif_transpose(image)


def preview_png(image: Image.Image, max_side: int = 128) -> bytes:
    """A PNG any browser shows: ``image`` upright, in 8-bit grey or RGB, at most ``max_side``
    pixels on its longer side (never enlarged). For TIFF and deep images, which browsers cannot
    show, and for large photos shown small."""
    image, _ = _to_l_or_rgb(exif_oriented(image))
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _to_l_or_rgb(image: Image.Image) -> tuple[Image.Image, str | None]:
    """8-bit ``"L"`` or ``"RGB"``; high bit depths are scaled, alpha is dropped."""
    note = None
    mode = image.mode
    if mode == "F" and _is_unit_range(image):
        return _to_8bit_gray(image, scale=255.0), (
            "the image holds floating-point values from 0 to 1; they were scaled to 0-255")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _to_8bit_gray(image), (
            "the image has more than 8 bits per pixel; it was scaled to 8 bits, so an image that "
            "uses only part of the range (10 or 12 bits) comes out darker than a viewer shows it"
        )
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() < 255:
            note = "the image's transparency was ignored; transparent areas keep their hidden colour"
        image = image.convert("L" if mode in ("LA", "La") else "RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode not in ("L", "RGB"):
        image = image.convert("RGB")  # YCbCr, RGBX; decode_upload refuses CMYK, LAB and HSV
    return image, note


def _is_unit_range(image: Image.Image) -> bool:
    """A floating-point image whose values all lie in [0, 1]: the usual normalised form."""
    values = np.asarray(image, dtype=np.float64)
    return bool(values.size and np.isfinite(values).all() and values.min() >= 0
                and values.max() <= 1.0)


def _to_8bit_gray(image: Image.Image, scale: float | None = None) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ImageInputError("the image holds NaN or infinite pixel values")
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ImageInputError(
            f"the image has pixel values from {values.min():g} to {values.max():g}; only 8- and "
            "16-bit ranges are supported"
        )
    if scale is None:
        # 16-bit storage, or 32-bit storage of values past 8 bits: the 16-bit range maps to 8.
        scale = 255 / 65535 if image.mode.startswith("I;16") or (
            values.size and values.max() > 255) else 1.0
    return Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8))


def _channels_equal(image: Image.Image) -> bool:
    array = np.asarray(image)
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all())


def _center_crop(image: Image.Image, crop: CropSpec) -> Image.Image:
    img_w, img_h = image.size
    if crop.kind == "none":
        return image
    if crop.kind == "square":
        side = min(img_w, img_h)
        box_w, box_h = side, side
    else:
        crop_w, crop_h = crop.crop_size  # type: ignore[misc]
        if crop.source_size:
            # The same fraction of this image as of the source: a source at another
            # resolution keeps the same field of view.
            box_w = round(img_w * crop_w / crop.source_size[0])
            box_h = round(img_h * crop_h / crop.source_size[1])
        else:
            box_w, box_h = min(crop_w, img_w), min(crop_h, img_h)
        box_w, box_h = max(1, min(box_w, img_w)), max(1, min(box_h, img_h))
    left = (img_w - box_w) // 2
    top = (img_h - box_h) // 2
    return image.crop((left, top, left + box_w, top + box_h))


def _size_warnings(size: tuple[int, int], crop: CropSpec, width: int, height: int) -> list[str]:
    img_w, img_h = size
    notes = []
    if crop.kind == "sized" and crop.source_size:
        reference = crop.source_size
        reference_text = f"the {reference[0]}x{reference[1]} source images"
        tolerance = SOURCE_SCALE_TOLERANCE
    else:
        reference = (width, height)
        reference_text = f"the native {width}x{height}"
        tolerance = NATIVE_SCALE_TOLERANCE
    # A square crop makes any aspect ratio square, so only the other crops are compared.
    if crop.kind != "square":
        expected = reference[0] / reference[1]
        actual = img_w / img_h
        if abs(math.log(actual / expected)) > math.log(ASPECT_RATIO_TOLERANCE):
            notes.append(
                f"the image's aspect ratio ({actual:.2f}) is far from the training images' "
                f"({expected:.2f}); it was distorted to fit"
            )
    if img_w < width or img_h < height:
        notes.append(
            f"the image ({img_w}x{img_h}) is smaller than the model's {width}x{height} input; "
            "it was enlarged, which adds no detail"
        )
    elif max(img_w / reference[0], img_h / reference[1]) > tolerance:
        notes.append(
            f"the image ({img_w}x{img_h}) is much larger than {reference_text}; "
            "it was shrunk to "
            f"{width}x{height}, so fine detail is lost and the framing may differ from training"
        )
    if (crop.kind == "sized" and crop.source_size and width <= img_w and height <= img_h
            and max(img_w / reference[0], img_h / reference[1]) < 1 / ASPECT_RATIO_TOLERANCE):
        # Well below the source size: a source image at a lower resolution, or one already
        # cropped (a MedMNIST+ image at 224x224, say), which cannot be told apart.
        notes.append(
            f"the image ({img_w}x{img_h}) is smaller than {reference_text}; it was taken for a "
            "whole source image at a lower resolution and cropped to its centre as they were, "
            "so an image that was already cropped lost its edges"
        )
    return notes

"""Uploaded images: safe decoding, and the path from a file to the array a model takes."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from medml.images import (
    ImageInputError,
    decode_upload,
    parse_crop,
    resampling_filter,
    to_model_input,
)

LIMITS = {"max_pixels": 4096 * 4096, "max_bytes": 10 * 1024 * 1024}
BLOOD = {"crop": "center 200x200 of the 360x363 source", "resize": "bilinear", "channels": 3}
BREAST = {"crop": "none (full frame)", "resize": "bilinear", "channels": 1}
OCT = {"crop": "center square", "resize": "bilinear", "channels": 1}


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def random_image(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header claiming another size (the CRC fixed, so only the size lies)."""
    header = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    crc = struct.pack(">I", zlib.crc32(header) & 0xFFFFFFFF)
    return png[:12] + header + crc + png[33:]


def model_input(data: bytes, *, size=28, channels=3, preprocessing=None):
    image = decode_upload(data, **LIMITS)
    return to_model_input(
        image, height=size, width=size, channels=channels, preprocessing=preprocessing or {}
    )


# --- the native size -----------------------------------------------------------------------------


def test_a_dataset_image_saved_as_png_comes_back_as_exactly_its_array():
    original = random_image((28, 28, 3))
    array, warnings = model_input(encode(original), preprocessing=BLOOD)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, original)
    assert warnings == []


def test_a_grayscale_image_at_the_native_size_keeps_every_pixel():
    original = random_image((28, 28))
    array, warnings = model_input(encode(original), channels=1, preprocessing=BREAST)
    assert array.shape == (28, 28, 1)
    np.testing.assert_array_equal(array[..., 0], original)
    assert warnings == []


def test_decoding_keeps_the_format_of_the_file():
    assert decode_upload(encode(random_image((8, 8, 3))), **LIMITS).format == "PNG"
    assert decode_upload(encode(random_image((8, 8, 3)), "JPEG"), **LIMITS).format == "JPEG"
    assert decode_upload(encode(random_image((8, 8, 3)), "BMP"), **LIMITS).format == "BMP"
    assert decode_upload(encode(random_image((8, 8, 3)), "TIFF"), **LIMITS).format == "TIFF"


# --- larger images follow the dataset's source path -----------------------------------------------


def blood_source(width=360, height=363) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A red frame around a random centre of the size BloodMNIST cropped; returns the crop box."""
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = 255
    box_w, box_h = round(width * 200 / 360), round(height * 200 / 363)
    left, top = (width - box_w) // 2, (height - box_h) // 2
    image[top:top + box_h, left:left + box_w] = random_image((box_h, box_w, 3), seed=3) // 2
    return image, (left, top, left + box_w, top + box_h)


def test_a_source_sized_blood_image_is_center_cropped_then_resized_bilinearly():
    source, box = blood_source()
    array, warnings = model_input(encode(source), preprocessing=BLOOD)
    assert box == (80, 81, 280, 281)
    expected = Image.fromarray(source).crop(box).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(array, np.asarray(expected))
    # Nothing of the red frame outside the crop reaches the model.
    assert not ((array[..., 0] > 200) & (array[..., 1] < 50)).any()
    assert warnings == []


def test_the_crop_scales_with_an_image_at_twice_the_source_resolution():
    source, box = blood_source(720, 726)
    assert box == (160, 163, 560, 563)
    array, _ = model_input(encode(source), preprocessing=BLOOD)
    expected = Image.fromarray(source).crop(box).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(array, np.asarray(expected))


def test_a_center_square_crop_keeps_the_middle_of_a_wide_image():
    wide = np.zeros((100, 300), dtype=np.uint8)
    wide[:, 100:200] = 200  # the centred square
    array, warnings = model_input(encode(wide), channels=1, preprocessing=OCT)
    assert (array == 200).all()
    assert warnings == []  # the square crop removes the aspect ratio difference


def test_a_full_frame_dataset_distorts_a_wide_image_and_says_so():
    wide = random_image((28, 70))
    array, warnings = model_input(encode(wide), channels=1, preprocessing=BREAST)
    expected = Image.fromarray(wide).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(array[..., 0], np.asarray(expected))
    assert any("aspect ratio (2.50)" in w for w in warnings)


def test_a_small_image_is_enlarged_with_a_warning():
    array, warnings = model_input(encode(random_image((14, 14, 3))))
    assert array.shape == (28, 28, 3)
    assert any("smaller than the model's 28x28 input" in w for w in warnings)


def test_a_huge_image_is_shrunk_with_a_warning_about_lost_detail():
    array, warnings = model_input(encode(np.full((1000, 1000, 3), 90, np.uint8)))
    assert (array == 90).all()
    assert any("much larger than the native 28x28" in w for w in warnings)


def test_an_image_at_the_blood_source_size_needs_no_size_warning():
    source, _ = blood_source()
    _, warnings = model_input(encode(source), preprocessing=BLOOD)
    assert warnings == []


def test_an_image_smaller_than_the_blood_crop_is_still_cropped_and_says_so():
    # A 224x224 image may be a low-resolution source or a MedMNIST+ image already cropped.
    image = random_image((224, 224, 3), seed=4)
    array, warnings = model_input(encode(image), preprocessing=BLOOD)
    box = (50, 50, 174, 173)  # 200/360 x 200/363 of it, centred
    expected = Image.fromarray(image).crop(box).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(array, np.asarray(expected))
    assert warnings == [
        "the image (224x224) is smaller than the 360x363 source images; it was taken for a "
        "whole source image at a lower resolution and cropped to its centre as they were, so an "
        "image that was already cropped lost its edges"]
    _, warnings = model_input(encode(random_image((300, 302, 3))), preprocessing=BLOOD)
    assert warnings == []  # near the source size: a source image


def test_the_resize_filter_comes_from_the_dataset():
    source = random_image((100, 100, 3), seed=5)
    bilinear, _ = model_input(encode(source), preprocessing={"resize": "bilinear"})
    nearest, _ = model_input(encode(source), preprocessing={"resize": "nearest"})
    expected = Image.fromarray(source).resize((28, 28), Image.Resampling.NEAREST)
    np.testing.assert_array_equal(nearest, np.asarray(expected))
    assert not np.array_equal(bilinear, nearest)


@pytest.mark.parametrize(("text", "kind", "crop", "source"), [
    ("center 200x200 of the 360x363 source", "sized", (200, 200), (360, 363)),
    ("center 64x48", "sized", (64, 48), None),
    ("center square", "square", None, None),
    ("none (full frame)", "none", None, None),
    ("none", "none", None, None),
    ("", "none", None, None),
])
def test_crop_descriptions_are_parsed(text, kind, crop, source):
    spec = parse_crop(text)
    assert (spec.kind, spec.crop_size, spec.source_size) == (kind, crop, source)


@pytest.mark.parametrize("text", ["top-left 20x20", "center 400x400 of the 360x363 source"])
def test_an_unknown_or_impossible_crop_is_an_error(text):
    with pytest.raises(ValueError, match="crop"):
        parse_crop(text)


def test_an_unknown_resize_filter_is_an_error():
    with pytest.raises(ValueError, match="resize must be one of"):
        resampling_filter("sinc")


# --- channels ----------------------------------------------------------------------------------


def test_a_colour_image_for_a_grayscale_model_is_converted_with_pillow_luma_and_a_warning():
    colour = random_image((28, 28, 3))
    array, warnings = model_input(encode(colour), channels=1, preprocessing=BREAST)
    np.testing.assert_array_equal(array[..., 0], np.asarray(Image.fromarray(colour).convert("L")))
    assert warnings == ["a colour image was given to a grayscale model; it was converted to grayscale"]


def test_a_grayscale_image_stored_as_rgb_is_converted_without_a_warning():
    gray = random_image((28, 28))
    array, warnings = model_input(encode(np.stack([gray] * 3, axis=-1)), channels=1)
    np.testing.assert_array_equal(array[..., 0], gray)
    assert warnings == []


def test_a_grayscale_image_for_a_colour_model_is_repeated_to_rgb_with_a_warning():
    gray = random_image((28, 28))
    array, warnings = model_input(encode(gray), channels=3)
    assert array.shape == (28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], gray)
    assert len(warnings) == 1 and "grayscale image was given to a colour model" in warnings[0]


def test_grey_pixels_saved_as_rgb_for_a_colour_model_get_the_same_warning():
    gray = random_image((28, 28))
    array, warnings = model_input(encode(np.stack([gray] * 3, axis=-1)), channels=3)
    np.testing.assert_array_equal(array, np.stack([gray] * 3, axis=-1))
    assert len(warnings) == 1 and "grayscale image was given to a colour model" in warnings[0]
    _, warnings = model_input(encode(random_image((28, 28, 3))), channels=3)
    assert warnings == []


def test_grey_images_are_not_unusual_for_a_model_trained_on_grey_images_stored_as_rgb():
    gray = random_image((28, 28))
    for data in (encode(gray), encode(np.stack([gray] * 3, axis=-1))):
        image = decode_upload(data, **LIMITS)
        array, warnings = to_model_input(image, height=28, width=28, channels=3,
                                         colour_training=False)
        assert array.shape == (28, 28, 3) and warnings == []


def test_a_floating_point_image_in_the_unit_range_is_scaled_to_0_255_and_says_so():
    unit = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    buffer = io.BytesIO()
    Image.fromarray(unit, mode="F").save(buffer, format="TIFF")
    array, warnings = model_input(buffer.getvalue(), channels=1)
    np.testing.assert_array_equal(array[..., 0], np.rint(unit.astype(np.float64) * 255))
    assert warnings == ["the image holds floating-point values from 0 to 1; they were scaled "
                        "to 0-255"]


def test_a_16_bit_grayscale_image_is_scaled_to_8_bits():
    deep = np.array([[0, 65535], [32896, 1028]], dtype=np.uint16).repeat(14, 0).repeat(14, 1)
    array, _ = model_input(encode(deep), channels=1)
    assert sorted(np.unique(array).tolist()) == [0, 4, 128, 255]


def test_transparency_is_dropped_with_a_warning():
    rgba = random_image((28, 28, 4))
    rgba[..., 3] = 0
    array, warnings = model_input(encode(rgba), channels=3)
    np.testing.assert_array_equal(array, rgba[..., :3])
    assert any("transparency" in w for w in warnings)


def test_a_palette_image_is_read_as_its_colours():
    colours = random_image((28, 28, 3))
    palette = Image.fromarray(colours).quantize(16)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    array, _ = model_input(buffer.getvalue())
    np.testing.assert_array_equal(array, np.asarray(palette.convert("RGB")))


def test_an_exif_rotated_photo_is_turned_upright():
    tall = np.zeros((40, 20, 3), dtype=np.uint8)
    tall[:20] = 255  # white top half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(tall, "PNG", exif=exif)
    array, _ = model_input(data, size=28)
    upright = np.asarray(Image.fromarray(tall).transpose(Image.Transpose.ROTATE_270))
    assert upright.shape == (20, 40, 3)
    expected = Image.fromarray(upright).resize((28, 28), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(array, np.asarray(expected))


# --- bad input -----------------------------------------------------------------------------------


def truncated_png() -> bytes:
    data = encode(random_image((64, 64, 3)))
    return data[: len(data) // 2]


def damaged_png() -> bytes:
    data = bytearray(encode(random_image((64, 64, 3))))
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the compressed pixels
    return bytes(data)


def truncated_jpeg() -> bytes:
    data = encode(random_image((64, 64, 3)), "JPEG")
    return data[: len(data) // 2]


def gif() -> bytes:
    return encode(random_image((8, 8)), "GIF")


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "the file is empty"),
    (b"hello, this is text and not a picture", "not a PNG, JPEG, BMP or TIFF image"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "not a PNG, JPEG, BMP or TIFF image"),
    (gif(), "not a PNG, JPEG, BMP or TIFF image"),
    (truncated_png(), "damaged or truncated"),
    (damaged_png(), "damaged or truncated"),
    (truncated_jpeg(), "damaged or truncated"),
    (with_png_size(encode(random_image((8, 8, 3))), 5000, 5000), "the limit is 16777216"),
    # Far past Pillow's own bomb limit: refused while reading the header.
    (with_png_size(encode(random_image((8, 8, 3))), 60000, 60000), "too large to decode safely"),
], ids=["empty", "text", "svg", "gif", "truncated-png", "damaged-png", "truncated-jpeg",
        "too-many-pixels", "decompression-bomb"])
def test_bad_files_are_refused_with_the_reason(data, reason):
    with pytest.raises(ImageInputError, match=reason):
        decode_upload(data, **LIMITS)


def test_a_real_decompression_bomb_is_refused_before_decoding():
    # 8000 x 8000 black pixels compress to about 60 KB but would take 64 MB to decode.
    bomb = encode(np.zeros((8000, 8000), dtype=np.uint8), compress_level=9)
    assert len(bomb) < 200_000
    with pytest.raises(ImageInputError, match="8000x8000 = 64000000 pixels"):
        decode_upload(bomb, **LIMITS)


def test_a_file_over_the_byte_limit_is_refused():
    data = encode(random_image((64, 64, 3)))
    with pytest.raises(ImageInputError, match=f"the file has {len(data)} bytes; the limit is 1000"):
        decode_upload(data, max_pixels=LIMITS["max_pixels"], max_bytes=1000)

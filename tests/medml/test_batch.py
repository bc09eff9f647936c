"""Tests of medml.batch: reading batch inputs (.npz, .zip of images) and writing results."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from medml.batch import BatchInput, BatchInputError, read_npz, read_zip, write_results
from medml.dataset_io import ImportLimits

SHAPE = (28, 28, 3)
CLASS_NAMES = ["adenoma", "carcinoma", "normal"]
MAX_IMAGE_BYTES = 1024 * 1024


# --- helpers -------------------------------------------------------------------------------------


def random_images(count: int, shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


def npz_file(**arrays: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    return buffer


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


def zip_file(members: dict[str, bytes], *, symlinks: dict[str, str] | None = None) -> io.BytesIO:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3  # Unix, so the mode bits are read as such
            info.external_attr = 0o120777 << 16  # a symbolic link
            archive.writestr(info, target)
    buffer.seek(0)
    return buffer


def load_npz(source, *, num_classes: int = 3):
    return read_npz(source, shape=SHAPE, num_classes=num_classes)


def load_zip(source, *, preprocessing=None, limits=None, progress=None):
    return read_zip(source, shape=SHAPE, class_names=CLASS_NAMES, preprocessing=preprocessing,
                    limits=limits or ImportLimits(), max_image_bytes=MAX_IMAGE_BYTES,
                    progress=progress)


# --- .npz ----------------------------------------------------------------------------------------


def test_an_npz_of_images_alone_gives_the_images_unlabelled_and_named_by_index():
    images = random_images(4)
    batch = load_npz(npz_file(images=images))

    np.testing.assert_array_equal(batch.images, images)
    assert batch.labels is None
    assert batch.names == ["0", "1", "2", "3"]
    assert len(batch) == 4


def test_an_npz_with_labels_gives_them_as_integers_whether_flat_or_a_column():
    images = random_images(3)
    flat = load_npz(npz_file(images=images, labels=np.array([2, 0, 1], dtype=np.uint8)))
    column = load_npz(npz_file(images=images, labels=np.array([[2], [0], [1]])))

    for batch in (flat, column):
        np.testing.assert_array_equal(batch.labels, [2, 0, 1])
        assert batch.labels.dtype == np.int64


def test_grayscale_images_without_a_channel_axis_get_one():
    images = random_images(2, (28, 28))
    batch = read_npz(npz_file(images=images), shape=(28, 28, 1), num_classes=2)
    assert batch.images.shape == (2, 28, 28, 1)
    np.testing.assert_array_equal(batch.images[..., 0], images)


def test_the_official_medmnist_layout_is_read_through_its_test_split():
    arrays = {f"{split}_images": random_images(n, seed=n) for split, n in
              (("train", 5), ("val", 2), ("test", 3))}
    arrays |= {f"{split}_labels": np.full((n, 1), i, dtype=np.uint8) for i, (split, n) in
               enumerate((("train", 5), ("val", 2), ("test", 3)))}
    batch = load_npz(npz_file(**arrays))

    np.testing.assert_array_equal(batch.images, arrays["test_images"])
    np.testing.assert_array_equal(batch.labels, [2, 2, 2])


@pytest.mark.parametrize("arrays, message", [
    ({"images": random_images(2, (32, 32, 3))}, "shape (2, 32, 32, 3)"),
    ({"images": random_images(2, (28, 28))}, "the model takes (N, 28, 28, 3)"),
    ({"images": random_images(2).astype(np.float32)}, "dtype float32; expected uint8"),
    ({"images": random_images(0)}, "images is empty"),
    ({"images": random_images(2), "labels": np.array([0, 3])}, "labels must lie in 0..2"),
    ({"images": random_images(2), "labels": np.array([-1, 0])}, "labels must lie in 0..2"),
    ({"images": random_images(2), "labels": np.array([0, 1, 2])}, "labels must be 2 integers"),
    ({"images": random_images(2), "labels": np.array([0.0, 1.0])}, "float64"),
    ({"pictures": random_images(2)}, "needs an 'images' array"),
    ({"test_images": random_images(2)}, "needs an 'images' array"),
])
def test_a_bad_npz_is_refused_naming_the_problem(arrays, message):
    with pytest.raises(BatchInputError) as caught:
        load_npz(npz_file(**arrays))
    assert message in str(caught.value)


def test_an_npz_holding_pickled_objects_is_refused_without_unpickling():
    objects = np.empty(2, dtype=object)
    objects[:] = [{"a": 1}, {"b": 2}]
    with pytest.raises(BatchInputError, match="object arrays are not allowed"):
        load_npz(npz_file(images=objects))


@pytest.mark.parametrize("data", [b"images,labels\n1,2\n", b"", b"PK\x03\x04 truncated"])
def test_a_file_that_is_not_an_npz_archive_is_refused_as_such(data):
    with pytest.raises(BatchInputError, match=re.escape("not a valid .npz file")):
        load_npz(io.BytesIO(data))


def test_a_plain_npy_array_is_refused_as_not_an_npz():
    buffer = io.BytesIO()
    np.save(buffer, random_images(2))
    buffer.seek(0)
    with pytest.raises(BatchInputError, match=re.escape("not a valid .npz file")):
        load_npz(buffer)


def test_npz_progress_is_reported_as_the_images_are_decompressed():
    images = random_images(600)  # 1.4 MB of pixels, decompressed 256 KiB at a time
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=np.zeros(600, dtype=np.int64))
    buffer.seek(0)
    calls = []
    batch = read_npz(buffer, shape=SHAPE, num_classes=3,
                     progress=lambda done, total: calls.append((done, total)))

    np.testing.assert_array_equal(batch.images, images)
    assert len(calls) >= 4
    assert calls[-1] == (600, 600)
    assert {total for _, total in calls} == {600}
    read = [done for done, _ in calls]
    assert read == sorted(set(read)) and read[0] > 0


def test_an_npz_in_fortran_order_is_read_as_written():
    images = np.asfortranarray(random_images(3))
    batch = read_npz(npz_file(images=images), shape=SHAPE, num_classes=3,
                     progress=lambda done, total: None)
    np.testing.assert_array_equal(batch.images, images)


def test_npz_images_of_the_wrong_type_are_refused_before_their_data_is_read():
    calls = []
    with pytest.raises(BatchInputError, match="dtype float32; expected uint8"):
        read_npz(npz_file(images=random_images(600).astype(np.float32)), shape=SHAPE,
                 num_classes=3, progress=lambda done, total: calls.append(done))
    assert calls == []


# --- .zip ----------------------------------------------------------------------------------------


def test_a_flat_zip_gives_its_images_unlabelled_in_name_order():
    images = random_images(3)
    batch = load_zip(zip_file({"scan-b.png": png(images[1]), "scan-a.png": png(images[0]),
                               "scan-c.png": png(images[2])}))

    assert batch.names == ["scan-a.png", "scan-b.png", "scan-c.png"]
    np.testing.assert_array_equal(batch.images, images)
    assert batch.labels is None
    assert batch.warnings == {}


def test_folders_named_after_the_classes_give_the_labels():
    images = random_images(3)
    batch = load_zip(zip_file({"normal/1.png": png(images[0]), "adenoma/2.png": png(images[1]),
                               "normal/3.png": png(images[2])}))

    assert batch.names == ["adenoma/2.png", "normal/1.png", "normal/3.png"]
    np.testing.assert_array_equal(batch.labels, [0, 2, 2])
    np.testing.assert_array_equal(batch.images, images[[1, 0, 2]])


def test_class_folders_inside_the_folder_that_was_zipped_give_the_labels():
    images = random_images(3)
    batch = load_zip(zip_file({"clinic/week 2/normal/1.png": png(images[0]),
                               "clinic/week 2/adenoma/2.png": png(images[1]),
                               "clinic/week 2/normal/3.png": png(images[2])}))
    np.testing.assert_array_equal(batch.labels, [0, 2, 2])
    assert batch.names[0] == "clinic/week 2/adenoma/2.png"  # names stay as in the archive


@pytest.mark.parametrize("names", [
    ["normal/1.png", "2.png"],  # one image outside any folder
    ["clinic/normal/1.png", "other/adenoma/2.png"],  # two top folders: neither wraps it all
    ["normal/1.png", "polyp/2.png"],  # a folder that is no class
])
def test_a_zip_whose_folders_are_not_all_class_names_is_unlabelled(names):
    image = png(random_images(1)[0])
    batch = load_zip(zip_file(dict.fromkeys(names, image)))
    assert batch.labels is None
    assert len(batch) == 2


def test_hidden_files_folders_and_macos_metadata_are_skipped():
    image = png(random_images(1)[0])
    batch = load_zip(zip_file({"scans/": b"", "scans/1.png": image, ".DS_Store": b"\0",
                               "__MACOSX/scans/._1.png": b"\0", "scans/.hidden.png": b"\0"}))
    assert batch.names == ["scans/1.png"]


def test_images_larger_than_native_go_through_the_datasets_resize():
    rng = np.random.default_rng(3)
    large = rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)
    source = Image.fromarray(large)
    nearest = np.asarray(source.resize((28, 28), Image.Resampling.NEAREST))
    bilinear = np.asarray(source.resize((28, 28), Image.Resampling.BILINEAR))
    assert not np.array_equal(nearest, bilinear)

    by_nearest = load_zip(zip_file({"big.png": png(large)}), preprocessing={"resize": "nearest"})
    by_default = load_zip(zip_file({"big.png": png(large)}), preprocessing=None)

    assert by_nearest.images.shape == (1, 28, 28, 3)
    np.testing.assert_array_equal(by_nearest.images[0], nearest)
    np.testing.assert_array_equal(by_default.images[0], bilinear)


def test_conversions_that_may_mislead_the_model_are_kept_as_warnings_per_image():
    gray = np.random.default_rng(1).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    batch = load_zip(zip_file({"gray.png": png(gray), "rgb.png": png(random_images(1)[0])}))
    assert list(batch.warnings) == ["gray.png"]
    assert "grayscale image was given to a colour model" in batch.warnings["gray.png"][0]
    np.testing.assert_array_equal(batch.images[0], np.repeat(gray, 3, axis=-1))


@pytest.mark.parametrize("name, message", [
    ("../escape.png", "escapes the archive"),
    ("scans/../../escape.png", "escapes the archive"),
    ("/etc/escape.png", "has an absolute path"),
    ("C:/escape.png", "has a drive letter"),
])
def test_members_that_could_escape_the_archive_are_refused(name, message):
    image = png(random_images(1)[0])
    with pytest.raises(BatchInputError, match=message):
        load_zip(zip_file({"ok.png": image, name: image}))


def test_a_symbolic_link_member_is_refused():
    with pytest.raises(BatchInputError, match=re.escape("'link.png' is a symbolic link")):
        load_zip(zip_file({"ok.png": png(random_images(1)[0])},
                          symlinks={"link.png": "/etc/passwd"}))


def test_a_member_that_is_not_an_image_file_is_refused_naming_it():
    with pytest.raises(BatchInputError, match=re.escape("'scans/notes.txt' is not a PNG, JPEG")):
        load_zip(zip_file({"scans/1.png": png(random_images(1)[0]), "scans/notes.txt": b"hi"}))


@pytest.mark.parametrize("data, reason", [
    (b"definitely not pixels", "not a PNG, JPEG, BMP or TIFF image"),
    (png(random_images(1)[0])[:80], "damaged or truncated"),
])
def test_a_corrupt_image_is_refused_naming_the_member(data, reason):
    with pytest.raises(BatchInputError) as caught:
        load_zip(zip_file({"scans/1.png": png(random_images(1)[0]), "scans/2.png": data}))
    assert str(caught.value).startswith("'scans/2.png': ")
    assert reason in str(caught.value)


def test_an_image_member_larger_than_the_per_image_limit_is_refused_before_any_is_read():
    # Compresses to a kilobyte but would take a megabyte once read. The damaged image sorts
    # first: had anything been read, the error would be about it.
    bomb = b"\0" * (MAX_IMAGE_BYTES + 1)
    with pytest.raises(BatchInputError) as caught:
        load_zip(zip_file({"scans/a-damaged.png": b"not pixels", "scans/z-bomb.png": bomb}))
    assert str(caught.value) == (
        f"'scans/z-bomb.png' has {MAX_IMAGE_BYTES + 1} bytes; the limit is {MAX_IMAGE_BYTES}")


def test_more_images_than_the_limit_are_refused_before_any_is_decoded():
    members = {f"{i}.png": b"not decoded" for i in range(4)}
    with pytest.raises(BatchInputError, match="archive has more than 3 images; the limit is 3"):
        load_zip(zip_file(members), limits=ImportLimits(max_members=3))


def test_a_zip_expanding_past_the_total_limit_is_refused():
    image = png(random_images(1)[0])
    with pytest.raises(BatchInputError, match="expands past the limit of 100 bytes"):
        load_zip(zip_file({"1.png": image}), limits=ImportLimits(max_total_bytes=100))


@pytest.mark.parametrize("members, message", [
    ({}, "holds no images"),
    ({"scans/": b"", ".DS_Store": b"\0"}, "holds no images"),
])
def test_a_zip_without_images_is_refused(members, message):
    with pytest.raises(BatchInputError, match=message):
        load_zip(zip_file(members))


def test_a_file_that_is_not_a_zip_is_refused_as_such():
    with pytest.raises(BatchInputError, match=re.escape("not a valid .zip file")):
        load_zip(io.BytesIO(b"just text"))


def test_progress_is_reported_up_to_the_number_of_images():
    image = png(random_images(1)[0])
    calls = []
    load_zip(zip_file({f"{i:03d}.png": image for i in range(70)}),
             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(64, 70), (70, 70)]


# --- results -------------------------------------------------------------------------------------


def results_of(labels):
    batch = BatchInput(images=random_images(2), names=["a.png", "normal/b.png"], labels=labels,
                       warnings={"a.png": ["resized"]})
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.15, 0.8]], dtype=np.float32)
    predicted = np.array([0, 2])
    return write_results(batch, probs, predicted, CLASS_NAMES)


def test_the_csv_has_a_header_and_one_row_per_image_with_each_class_probability():
    csv_bytes, _ = results_of(labels=None)
    rows = list(csv.reader(io.StringIO(csv_bytes.decode())))

    assert rows == [
        ["name", "predicted_index", "predicted_label", "p[adenoma]", "p[carcinoma]", "p[normal]"],
        ["a.png", "0", "adenoma", "0.700000", "0.200000", "0.100000"],
        ["normal/b.png", "2", "normal", "0.050000", "0.150000", "0.800000"],
    ]


def test_the_csv_of_labelled_input_has_the_true_label_too():
    csv_bytes, _ = results_of(labels=np.array([1, 2]))
    rows = list(csv.reader(io.StringIO(csv_bytes.decode())))

    assert rows[0][:4] == ["name", "predicted_index", "predicted_label", "true_label"]
    assert [row[3] for row in rows[1:]] == ["carcinoma", "normal"]
    assert len(rows) == 3


def test_the_json_holds_predictions_probabilities_labels_and_warnings():
    _, json_bytes = results_of(labels=np.array([1, 2]))
    rows = json.loads(json_bytes)

    assert rows[0] == {
        "name": "a.png", "predicted_index": 0, "predicted_label": "adenoma",
        "probabilities": {"adenoma": 0.7, "carcinoma": 0.2, "normal": 0.1},
        "true_index": 1, "true_label": "carcinoma", "warnings": ["resized"],
    }
    assert rows[1]["predicted_label"] == "normal"
    assert rows[1]["true_label"] == "normal"
    assert "warnings" not in rows[1]


def test_the_json_of_unlabelled_input_has_no_true_labels():
    _, json_bytes = results_of(labels=None)
    assert all("true_label" not in row and "true_index" not in row for row in json.loads(json_bytes))


def test_results_keep_a_spreadsheet_from_reading_a_file_name_as_a_formula():
    batch = BatchInput(images=np.zeros((1, 2, 2, 1), np.uint8), names=["=cmd|'/c calc'!A1.png"])
    csv_bytes, _ = write_results(batch, np.array([[0.25, 0.75]]), np.array([1]), ["a", "b"])
    row = csv_bytes.decode().splitlines()[1]
    assert row.startswith("\"'=cmd") or row.startswith("'=cmd")


def test_results_keep_a_spreadsheet_from_reading_a_class_name_as_a_formula():
    class_names = ["=HYPERLINK(\"http://x\")", "@SUM(1)", "benign, \"usual\"\nform"]
    batch = BatchInput(images=np.zeros((2, 2, 2, 1), np.uint8), names=["a.png", "b.png"],
                       labels=np.array([1, 2]))
    csv_bytes, json_bytes = write_results(batch, np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7]]),
                                          np.array([0, 2]), class_names)
    rows = list(csv.reader(io.StringIO(csv_bytes.decode())))

    assert [row[2:4] for row in rows[1:]] == [
        ["'=HYPERLINK(\"http://x\")", "'@SUM(1)"],
        ["benign, \"usual\"\nform", "benign, \"usual\"\nform"],
    ]
    assert not any(cell[:1] in ("=", "+", "-", "@") for row in rows for cell in row)
    # The JSON is data, not a spreadsheet: the names as they are.
    assert json.loads(json_bytes)[0]["predicted_label"] == class_names[0]


def corrupt_member_zip(name: str, image: bytes) -> io.BytesIO:
    """A zip whose member ``name`` has damaged compressed data (its directory is intact)."""
    data = bytearray(zip_file({"scans/1.png": png(random_images(1)[0]),
                               name: image + b"\0" * 4096}).getvalue())
    start = data.index(name.encode()) + len(name)  # the member's data follows its local header
    data[start + 8:start + 40] = b"\xff" * 32
    return io.BytesIO(bytes(data))


def test_a_member_whose_compressed_data_is_damaged_is_refused_naming_it():
    with pytest.raises(BatchInputError) as caught:
        load_zip(corrupt_member_zip("scans/2.png", png(random_images(1)[0])))
    assert str(caught.value).startswith("'scans/2.png' is corrupt: ")


def test_windows_thumbnail_caches_and_folder_settings_are_skipped_as_the_import_does():
    image = png(random_images(1)[0])
    batch = load_zip(zip_file({"normal/1.png": image, "normal/Thumbs.db": b"\0",
                               "normal/desktop.ini": b"[.ShellClassInfo]"}))
    assert batch.names == ["normal/1.png"]
    assert batch.labels.tolist() == [2]


def test_class_folders_written_with_backslashes_give_the_labels():
    image = png(random_images(1)[0])
    batch = load_zip(zip_file({"adenoma\\1.png": image, "normal\\2.png": image}))
    assert batch.labels.tolist() == [0, 2]

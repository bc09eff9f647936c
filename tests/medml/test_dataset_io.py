"""Tests of medml.dataset_io: MedMNIST npz files and zips of image folders."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medml.data import SPLITS, DatasetArrays
from medml.dataset_io import (
    DatasetFormatError,
    ImportLimits,
    image_to_png_bytes,
    load_dataset_npz,
    load_image_folder_zip,
    load_medmnist_npz,
    md5_of,
    medmnist_info,
    official_medmnist_info,
    parse_medmnist_filename,
    sample_grid,
    save_dataset_npz,
    sha256_of,
)

SHARED_DATA = Path(
    os.environ.get("MEDMNIST_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data"
)
BREAST = SHARED_DATA / "breastmnist.npz"
BLOOD = SHARED_DATA / "bloodmnist.npz"


# --------------------------------------------------------------------------------------------
# helpers


def make_arrays(counts=(12, 4, 5), size=10, channels=None, num_classes=3, seed=0) -> dict:
    """Official-layout arrays; ``channels=None`` gives (N, H, W) grayscale images."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(SPLITS, counts, strict=True):
        shape = (count, size, size) if channels is None else (count, size, size, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % num_classes).astype(np.uint8).reshape(-1, 1)
    return arrays


def write_npz(path: Path, arrays: dict) -> Path:
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return path


def png_bytes(size=(12, 12), mode="RGB", seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    width, height = size
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def class_folders(classes=("cat", "dog"), per_class=5, prefix="", **image) -> dict[str, bytes]:
    return {
        f"{prefix}{name}/img{index:02d}.png": png_bytes(seed=index + 100 * c, **image)
        for c, name in enumerate(classes)
        for index in range(per_class)
    }


def split_folders(classes=("cat", "dog"), counts=(4, 2, 2), prefix="", **image) -> dict:
    members = {}
    for split, count in zip(SPLITS, counts, strict=True):
        members.update(class_folders(classes, count, prefix=f"{prefix}{split}/", **image))
    return members


# --------------------------------------------------------------------------------------------
# MedMNIST metadata


def test_parse_medmnist_filename_reads_flag_and_size():
    assert parse_medmnist_filename("bloodmnist.npz") == ("bloodmnist", 28)
    assert parse_medmnist_filename("breastmnist_64.npz") == ("breastmnist", 64)
    assert parse_medmnist_filename("/data/PathMNIST_224.npz") == ("pathmnist", 224)
    assert parse_medmnist_filename("organmnist3d.npz") is None
    assert parse_medmnist_filename("nodulemnist3d_64.npz") is None
    assert parse_medmnist_filename("bloodmnist_32.npz") is None
    assert parse_medmnist_filename("mydata.npz") is None
    assert parse_medmnist_filename("bloodmnist.zip") is None


def test_medmnist_info_gives_class_names_in_label_order():
    info = medmnist_info("breastmnist")
    if info is None:
        pytest.skip("the medmnist package is not installed")
    assert info["flag"] == "breastmnist"
    assert info["class_names"] == ["malignant", "normal, benign"]
    assert info["n_channels"] == 1
    assert info["task"] == "binary-class"
    assert info["license"] == "CC BY 4.0"
    assert info["md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert set(info["urls"]) == {28, 64, 128, 224}
    assert info["md5s"][28] == info["md5"]
    blood = medmnist_info("BloodMNIST")
    assert len(blood["class_names"]) == 8
    assert blood["class_names"][0] == "basophil"


def test_medmnist_info_is_none_for_unknown_flags():
    assert medmnist_info("catsanddogsmnist") is None


# --------------------------------------------------------------------------------------------
# npz: accepted files


def test_it_loads_a_valid_npz_and_round_trips_it(tmp_path):
    path = write_npz(tmp_path / "data.npz", make_arrays(channels=3))
    loaded = load_medmnist_npz(path, class_names=["a", "b", "c"])

    assert loaded.class_names == ["a", "b", "c"]
    assert loaded.split_counts() == {"train": 12, "val": 4, "test": 5}
    assert loaded.image_shape == (10, 10, 3)
    assert loaded.labels("train").dtype == np.int64
    assert loaded.labels("train").shape == (12,)
    assert loaded.extra == {"format": "medmnist-npz", "official_keys_only": True}

    stored = tmp_path / "stored"  # no suffix: the file must be written exactly here
    save_dataset_npz(loaded, stored)
    with np.load(stored) as raw:
        assert raw["train_labels"].shape == (12, 1)
        assert raw["train_labels"].dtype == np.uint8
    again = load_dataset_npz(stored, ["a", "b", "c"])
    for split in SPLITS:
        np.testing.assert_array_equal(again.images(split), loaded.images(split))
        np.testing.assert_array_equal(again.labels(split), loaded.labels(split))


def test_it_adds_a_channel_axis_to_grayscale_and_stores_it_without_one(tmp_path):
    arrays = make_arrays()
    loaded = load_medmnist_npz(write_npz(tmp_path / "gray.npz", arrays))

    assert loaded.images("val").shape == (4, 10, 10, 1)
    np.testing.assert_array_equal(loaded.images("val")[..., 0], arrays["val_images"])
    assert loaded.class_names == ["class 0", "class 1", "class 2"]

    buffer = io.BytesIO()
    save_dataset_npz(loaded, buffer)
    buffer.seek(0)
    with np.load(buffer) as raw:
        assert raw["val_images"].shape == (4, 10, 10)


def test_it_ignores_extra_keys(tmp_path):
    arrays = make_arrays()
    arrays["notes"] = np.arange(3)
    loaded = load_medmnist_npz(write_npz(tmp_path / "extra.npz", arrays))
    assert loaded.extra["official_keys_only"] is False
    assert loaded.split_counts()["train"] == 12


def test_it_reads_file_objects_and_restores_their_position(tmp_path):
    data = write_npz(tmp_path / "d.npz", make_arrays()).read_bytes()
    handle = io.BytesIO(b"xx" + data)
    handle.seek(2)
    loaded = load_medmnist_npz(handle)
    assert loaded.num_classes == 3
    assert handle.tell() == 2


def test_it_stores_labels_of_many_classes_in_a_wider_dtype(tmp_path):
    labels = np.arange(300, dtype=np.int64)
    images = np.zeros((300, 8, 8, 1), dtype=np.uint8)
    arrays = DatasetArrays(
        splits=dict.fromkeys(SPLITS, (images, labels)),
        class_names=[f"c{i}" for i in range(300)],
    )
    save_dataset_npz(arrays, tmp_path / "wide.npz")
    with np.load(tmp_path / "wide.npz") as raw:
        assert raw["test_labels"].dtype == np.uint16
    assert load_dataset_npz(tmp_path / "wide.npz", arrays.class_names).labels("test")[-1] == 299


# --------------------------------------------------------------------------------------------
# npz: rejections


def _rejects(tmp_path, arrays, match, **kwargs):
    path = write_npz(tmp_path / "bad.npz", arrays)
    with pytest.raises(DatasetFormatError, match=match):
        load_medmnist_npz(path, **kwargs)


def test_it_rejects_a_missing_key(tmp_path):
    arrays = make_arrays()
    del arrays["val_labels"]
    _rejects(tmp_path, arrays, "missing key 'val_labels'")


def test_it_rejects_float_images(tmp_path):
    arrays = make_arrays()
    arrays["train_images"] = arrays["train_images"].astype(np.float32)
    _rejects(tmp_path, arrays, "train_images has dtype float32; expected uint8")


def test_it_rejects_images_of_the_wrong_shape(tmp_path):
    arrays = make_arrays(channels=2)
    _rejects(tmp_path, arrays, r"train_images has shape \(12, 10, 10, 2\)")
    arrays = make_arrays()
    arrays["test_images"] = np.zeros((5, 12, 12), dtype=np.uint8)
    _rejects(tmp_path, arrays, "test_images holds images of shape")
    _rejects(tmp_path, make_arrays(size=4), "at least 8")


def test_it_rejects_non_integer_labels(tmp_path):
    arrays = make_arrays()
    arrays["val_labels"] = arrays["val_labels"].astype(np.float64)
    _rejects(tmp_path, arrays, "val_labels has dtype float64; expected an integer dtype")


def test_it_rejects_a_label_out_of_range_for_the_class_names(tmp_path):
    arrays = make_arrays()
    arrays["test_labels"][0] = 9
    _rejects(
        tmp_path,
        arrays,
        "label 9 in test_labels is out of range for 8 classes",
        class_names=[f"c{i}" for i in range(8)],
    )


@pytest.mark.parametrize("names, problem", [
    (["ok", "   ", "fine"], "class names must not be empty"),
    (["ok", "x" * 256, "fine"], "has 256 characters; the limit is 255"),
    (["ok", "ok", "fine"], "class names are not unique"),
])
def test_it_rejects_empty_overlong_or_repeated_class_names(tmp_path, names, problem):
    # A prediction stores its class name in a 255-character column.
    _rejects(tmp_path, make_arrays(), problem, class_names=names)


def test_it_rejects_a_class_folder_name_longer_than_the_limit(tmp_path):
    path = write_zip(tmp_path / "long.zip", class_folders(classes=("cat", "d" * 300)))
    with pytest.raises(DatasetFormatError, match="has 300 characters; the limit is 255"):
        load_image_folder_zip(path)


def test_it_rejects_negative_labels(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"] = arrays["train_labels"].astype(np.int64)
    arrays["train_labels"][3] = -1
    _rejects(tmp_path, arrays, "label -1 in train_labels is negative")


def test_it_rejects_label_and_image_counts_that_differ(tmp_path):
    arrays = make_arrays()
    arrays["val_labels"] = arrays["val_labels"][:3]
    _rejects(tmp_path, arrays, "val_labels has 3 labels but val_images has 4 images")


def test_it_rejects_an_empty_split(tmp_path):
    arrays = make_arrays(counts=(12, 0, 5))
    _rejects(tmp_path, arrays, "split 'val' is empty")


def test_it_rejects_multi_label_tasks(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"] = np.zeros((12, 14), dtype=np.uint8)
    _rejects(tmp_path, arrays, "multi-label tasks are not supported")


def test_it_rejects_pickled_object_arrays(tmp_path):
    arrays = make_arrays()
    arrays["train_labels"] = np.array([{"label": 1}] * 12, dtype=object)
    path = tmp_path / "pickled.npz"
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)
    with pytest.raises(DatasetFormatError, match=r"object arrays are not allowed \(pickled data\)"):
        load_medmnist_npz(path)


def test_it_rejects_files_that_are_not_npz_archives(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("just some text")
    with pytest.raises(DatasetFormatError, match=r"not a valid \.npz file"):
        load_medmnist_npz(text)

    good = write_npz(tmp_path / "good.npz", make_arrays()).read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetFormatError, match=r"not a valid \.npz file"):
        load_medmnist_npz(truncated)

    single = tmp_path / "single.npy"
    np.save(single, np.zeros(3))
    with pytest.raises(DatasetFormatError, match=r"not a valid \.npz file"):
        load_medmnist_npz(single)

    with pytest.raises(DatasetFormatError, match=r"not a valid \.npz file"):
        load_medmnist_npz(io.BytesIO(b""))


def test_it_rejects_a_corrupted_member(tmp_path):
    data = bytearray(write_npz(tmp_path / "good.npz", make_arrays(size=32)).read_bytes())
    # Flip bytes inside the first member's compressed data; the directory stays intact.
    for offset in range(200, 260):
        data[offset] ^= 0xFF
    with pytest.raises(DatasetFormatError, match="train_images"):
        load_medmnist_npz(io.BytesIO(bytes(data)))


def test_it_rejects_an_npz_larger_than_the_limit_before_loading(tmp_path):
    path = write_npz(tmp_path / "big.npz", make_arrays())
    with pytest.raises(DatasetFormatError, match="bytes uncompressed; the limit is 1000"):
        load_medmnist_npz(path, limits=ImportLimits(max_total_bytes=1000))


# --------------------------------------------------------------------------------------------
# zip of class folders without split folders


def test_it_splits_class_folders_stratified_and_deterministically(tmp_path):
    members = class_folders(("dog", "cat", "bird"), per_class=10)
    path = write_zip(tmp_path / "pets.zip", members)

    first = load_image_folder_zip(path, seed=1)
    again = load_image_folder_zip(path, seed=1)
    other = load_image_folder_zip(path, seed=2)

    assert first.class_names == ["bird", "cat", "dog"]
    assert first.split_counts() == {"train": 21, "val": 3, "test": 6}
    for split in SPLITS:
        assert (
            first.class_counts()[split]
            == {"train": [7] * 3, "val": [1] * 3, "test": [2] * 3}[split]
        )
        np.testing.assert_array_equal(first.images(split), again.images(split))
        np.testing.assert_array_equal(first.labels(split), again.labels(split))
    assert first.extra["files"] == again.extra["files"]
    assert first.extra["files"] != other.extra["files"]
    assert first.extra["format"] == "image-folder-zip"
    all_files = [name for split in SPLITS for name in first.extra["files"][split]]
    assert sorted(all_files) == sorted(members)

    # The pixels and labels follow the member they came from.
    name = first.extra["files"]["test"][0]
    expected = np.asarray(Image.open(io.BytesIO(members[name])))
    np.testing.assert_array_equal(first.images("test")[0], expected)
    assert first.class_names[first.labels("test")[0]] == name.split("/")[0]


def test_it_keeps_grayscale_images_single_channel(tmp_path):
    path = write_zip(tmp_path / "gray.zip", class_folders(per_class=3, mode="L"))
    loaded = load_image_folder_zip(path)
    assert loaded.image_shape == (12, 12, 1)
    assert loaded.split_counts() == {"train": 2, "val": 2, "test": 2}
    assert load_image_folder_zip(path, channels=3).image_shape == (12, 12, 3)


def test_it_uses_three_channels_when_any_image_is_in_color(tmp_path):
    members = class_folders(per_class=3, mode="L")
    members["cat/color.png"] = png_bytes(mode="RGB")
    loaded = load_image_folder_zip(write_zip(tmp_path / "mixed.zip", members))
    assert loaded.channels == 3
    gray = load_image_folder_zip(write_zip(tmp_path / "mixed.zip", members), channels=1)
    assert gray.channels == 1


def test_it_scales_16_bit_images_to_8_bits(tmp_path):
    members = class_folders(per_class=3, mode="L")
    buffer = io.BytesIO()
    Image.fromarray(np.full((12, 12), 65535, dtype=np.uint16)).save(buffer, format="PNG")
    members["cat/deep.png"] = buffer.getvalue()
    loaded = load_image_folder_zip(write_zip(tmp_path / "deep.zip", members))
    assert loaded.channels == 1
    every = np.concatenate([loaded.images(split) for split in SPLITS])
    assert (every.reshape(len(every), -1) == 255).all(axis=1).any()


def test_it_ignores_macos_metadata_dotfiles_and_folders(tmp_path):
    members = class_folders(per_class=3)
    members["__MACOSX/cat/._img00.png"] = b"resource fork"
    members["cat/.DS_Store"] = b"finder"
    members["dog/"] = b""
    loaded = load_image_folder_zip(write_zip(tmp_path / "mac.zip", members))
    assert sum(loaded.split_counts().values()) == 6


def test_it_reports_progress(tmp_path):
    calls = []
    path = write_zip(tmp_path / "p.zip", class_folders(per_class=3))
    load_image_folder_zip(path, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (0, 6)
    assert calls[-1] == (6, 6)


def test_it_resizes_to_image_size(tmp_path):
    members = class_folders(per_class=3, size=(20, 16))
    members["dog/big.png"] = png_bytes(size=(40, 30))
    path = write_zip(tmp_path / "sizes.zip", members)
    with pytest.raises(DatasetFormatError, match=r"sizes differ .*pass image_size"):
        load_image_folder_zip(path)
    loaded = load_image_folder_zip(path, image_size=16)
    assert loaded.image_shape == (16, 16, 3)


def test_it_keeps_a_shared_non_square_size(tmp_path):
    path = write_zip(tmp_path / "wide.zip", class_folders(per_class=3, size=(20, 10)))
    assert load_image_folder_zip(path).image_shape == (10, 20, 3)


def test_it_rejects_a_class_with_too_few_images(tmp_path):
    members = class_folders(per_class=4)
    del members["dog/img00.png"], members["dog/img01.png"]
    path = write_zip(tmp_path / "few.zip", members)
    with pytest.raises(DatasetFormatError, match="class 'dog' has 2 images; at least 3"):
        load_image_folder_zip(path)


def test_it_rejects_a_single_class(tmp_path):
    path = write_zip(tmp_path / "one.zip", class_folders(classes=("cat",), per_class=4))
    with pytest.raises(DatasetFormatError, match="at least 2 are needed"):
        load_image_folder_zip(path)


def test_it_rejects_images_outside_class_folders(tmp_path):
    members = class_folders(per_class=3)
    members["loose.png"] = png_bytes()
    with pytest.raises(DatasetFormatError, match=r"member 'loose\.png' is not at <class>/<file>"):
        load_image_folder_zip(write_zip(tmp_path / "loose.zip", members))


# --------------------------------------------------------------------------------------------
# zip with split folders


def test_it_uses_train_val_test_folders(tmp_path):
    path = write_zip(tmp_path / "split.zip", split_folders(counts=(4, 2, 3)))
    loaded = load_image_folder_zip(path)
    assert loaded.class_names == ["cat", "dog"]
    assert loaded.split_counts() == {"train": 8, "val": 4, "test": 6}
    assert loaded.extra["files"]["val"] == [
        "val/cat/img00.png",
        "val/cat/img01.png",
        "val/dog/img00.png",
        "val/dog/img01.png",
    ]
    np.testing.assert_array_equal(loaded.labels("val"), [0, 0, 1, 1])


def test_it_accepts_one_wrapping_top_folder(tmp_path):
    split = load_image_folder_zip(write_zip(tmp_path / "a.zip", split_folders(prefix="mydata/")))
    assert split.extra["files"]["train"][0] == "mydata/train/cat/img00.png"
    assert split.split_counts() == {"train": 8, "val": 4, "test": 4}

    plain = load_image_folder_zip(
        write_zip(tmp_path / "b.zip", class_folders(per_class=3, prefix="mydata/"))
    )
    assert plain.class_names == ["cat", "dog"]


def test_it_allows_a_class_missing_from_val(tmp_path):
    members = split_folders(classes=("cat", "dog", "eel"))
    for name in [name for name in members if name.startswith("val/eel/")]:
        del members[name]
    loaded = load_image_folder_zip(write_zip(tmp_path / "m.zip", members))
    assert loaded.class_counts()["val"] == [2, 2, 0]


def test_it_rejects_a_class_that_is_not_in_train(tmp_path):
    members = split_folders()
    members["test/eel/img00.png"] = png_bytes()
    with pytest.raises(DatasetFormatError, match="class 'eel' appears in test but not in train"):
        load_image_folder_zip(write_zip(tmp_path / "m.zip", members))


def test_it_rejects_split_folders_without_val(tmp_path):
    members = {k: v for k, v in split_folders().items() if not k.startswith("val/")}
    with pytest.raises(DatasetFormatError, match="no 'val' folder"):
        load_image_folder_zip(write_zip(tmp_path / "m.zip", members))


# --------------------------------------------------------------------------------------------
# zip rejections


def _zip_rejects(tmp_path, members, match, **kwargs):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(DatasetFormatError, match=match):
        load_image_folder_zip(path, **kwargs)


def test_it_rejects_path_traversal(tmp_path):
    members = class_folders(per_class=3)
    members["../evil.png"] = png_bytes()
    _zip_rejects(tmp_path, members, r"member '\.\./evil\.png' escapes the archive")
    members = class_folders(per_class=3)
    members["cat/../../evil.png"] = png_bytes()
    _zip_rejects(tmp_path, members, "escapes the archive")


def test_it_rejects_absolute_paths_and_drive_letters(tmp_path):
    members = class_folders(per_class=3)
    members["/etc/evil.png"] = png_bytes()
    _zip_rejects(tmp_path, members, "member '/etc/evil.png' has an absolute path")
    members = class_folders(per_class=3)
    members["C:/evil.png"] = png_bytes()
    _zip_rejects(tmp_path, members, "has a drive letter")


def test_it_rejects_symlink_members(tmp_path):
    members = class_folders(per_class=3)
    link = zipfile.ZipInfo("cat/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    members[link] = "/etc/passwd"
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(DatasetFormatError, match=r"member 'cat/link\.png' is a symbolic link"):
        load_image_folder_zip(path)


def test_it_rejects_too_many_members(tmp_path):
    _zip_rejects(
        tmp_path,
        class_folders(per_class=3),
        "archive has 6 members; the limit is 5",
        limits=ImportLimits(max_members=5),
    )


def test_it_rejects_too_many_bytes(tmp_path):
    members = class_folders(per_class=3)
    total = sum(len(data) for data in members.values())
    _zip_rejects(
        tmp_path,
        members,
        f"archive holds {total} bytes uncompressed; the limit is 1000",
        limits=ImportLimits(max_total_bytes=1000),
    )
    members["cat/huge.png"] = b"\0" * 5000
    _zip_rejects(
        tmp_path,
        members,
        "member 'cat/huge.png' is 5000 bytes uncompressed; the limit is 4096",
        limits=ImportLimits(max_member_bytes=4096),
    )


def test_it_rejects_files_that_are_not_images_by_extension(tmp_path):
    members = class_folders(per_class=3)
    members["cat/readme.txt"] = b"hello"
    _zip_rejects(tmp_path, members, "member 'cat/readme.txt' is not an image")


def test_it_rejects_a_non_image_named_png(tmp_path):
    members = class_folders(per_class=3)
    members["dog/fake.png"] = b"this is not a picture"
    _zip_rejects(tmp_path, members, "'dog/fake.png' is not a readable image")


def test_it_rejects_a_truncated_png(tmp_path):
    members = class_folders(per_class=3)
    whole = png_bytes()
    members["dog/cut.png"] = whole[: len(whole) // 2]
    _zip_rejects(tmp_path, members, "'dog/cut.png' is not a readable image")


def test_it_rejects_an_image_format_not_accepted(tmp_path):
    members = class_folders(per_class=3)
    buffer = io.BytesIO()
    Image.new("L", (12, 12)).save(buffer, format="GIF")
    members["dog/anim.png"] = buffer.getvalue()
    _zip_rejects(tmp_path, members, "'dog/anim.png' is a GIF image")


def test_it_rejects_decompression_bombs(tmp_path):
    members = class_folders(per_class=3)
    buffer = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buffer, format="PNG")  # compresses to a few KiB
    members["dog/bomb.png"] = buffer.getvalue()
    _zip_rejects(
        tmp_path,
        members,
        "'dog/bomb.png' has 3000x3000 = 9000000 pixels; the limit is 1000000",
        limits=ImportLimits(max_image_pixels=1_000_000),
    )


def test_it_rejects_files_that_are_not_zips(tmp_path):
    path = tmp_path / "not.zip"
    path.write_bytes(b"plain bytes")
    with pytest.raises(DatasetFormatError, match="not a valid zip archive"):
        load_image_folder_zip(path)


def test_it_rejects_an_archive_without_images(tmp_path):
    _zip_rejects(tmp_path, {"__MACOSX/x": b"", ".hidden.png": b""}, "holds no images")


# --------------------------------------------------------------------------------------------
# helpers


def test_sha256_of_paths_and_file_objects_agree(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc" * 1000)
    handle = io.BytesIO(path.read_bytes())
    handle.seek(7)
    assert sha256_of(path) == sha256_of(handle)
    assert handle.tell() == 7
    assert sha256_of(io.BytesIO(b"abc")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_md5_of_paths_and_file_objects_agree(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    handle = io.BytesIO(b"abc")
    handle.seek(2)
    assert md5_of(path) == md5_of(handle) == "900150983cd24fb0d6963f7d28e17f72"
    assert handle.tell() == 2


def test_sample_grid_picks_up_to_per_class_indices_of_each_class(tmp_path):
    loaded = load_medmnist_npz(write_npz(tmp_path / "d.npz", make_arrays(counts=(30, 4, 5))))
    grid = sample_grid(loaded, per_class=4, seed=3)
    assert set(grid) == {0, 1, 2}
    labels = loaded.labels("train")
    for class_id, indices in grid.items():
        assert len(indices) == 4
        assert all(labels[i] == class_id for i in indices)
    assert grid == sample_grid(loaded, per_class=4, seed=3)
    assert grid != sample_grid(loaded, per_class=4, seed=4)
    assert [len(v) for v in sample_grid(loaded, "val", per_class=8).values()] == [2, 1, 1]


def test_image_to_png_bytes_encodes_gray_and_color():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8, 1)
    decoded = Image.open(io.BytesIO(image_to_png_bytes(gray)))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), gray[..., 0])
    color = np.zeros((8, 6, 3), dtype=np.uint8)
    assert Image.open(io.BytesIO(image_to_png_bytes(color))).size == (6, 8)
    with pytest.raises(ValueError, match="uint8"):
        image_to_png_bytes(gray.astype(np.float32))


def test_a_name_alone_does_not_make_a_file_official(tmp_path):
    if medmnist_info("bloodmnist") is None:
        pytest.skip("the medmnist package is not installed")
    spoof = write_npz(tmp_path / "bloodmnist.npz", make_arrays())
    assert official_medmnist_info("bloodmnist.npz", spoof) is None
    assert official_medmnist_info("mydata.npz", spoof) is None


# --------------------------------------------------------------------------------------------
# the real MedMNIST files, when available


@pytest.mark.skipif(not BREAST.exists(), reason=f"{BREAST} is not available")
def test_the_official_file_is_known_by_its_name_and_published_md5():
    if medmnist_info("breastmnist") is None:
        pytest.skip("the medmnist package is not installed")
    with open(BREAST, "rb") as handle:
        handle.seek(5)
        assert official_medmnist_info("breastmnist.npz", handle)["flag"] == "breastmnist"
        assert handle.tell() == 5
        # The same bytes claiming another size, or under another name, are not it.
        assert official_medmnist_info("breastmnist_64.npz", handle) is None
        assert official_medmnist_info("ultrasound.npz", handle) is None


@pytest.mark.skipif(not BREAST.exists(), reason=f"{BREAST} is not available")
def test_it_loads_the_official_breastmnist_file():
    info = medmnist_info("breastmnist")
    names = info["class_names"] if info else ["malignant", "normal, benign"]
    loaded = load_medmnist_npz(BREAST, class_names=names)
    assert loaded.split_counts() == {"train": 546, "val": 78, "test": 156}
    assert loaded.class_names == ["malignant", "normal, benign"]
    assert loaded.image_shape == (28, 28, 1)
    assert loaded.class_counts()["train"] == [147, 399]
    assert loaded.extra["official_keys_only"] is True


@pytest.mark.skipif(not BLOOD.exists(), reason=f"{BLOOD} is not available")
def test_it_loads_the_official_bloodmnist_file():
    info = medmnist_info("bloodmnist")
    loaded = load_medmnist_npz(BLOOD, class_names=info["class_names"] if info else None)
    assert loaded.split_counts() == {"train": 11959, "val": 1712, "test": 3421}
    assert loaded.num_classes == 8
    assert loaded.channels == 3
    assert loaded.class_counts()["test"][0] == 244

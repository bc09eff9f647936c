"""Tests of the dataset import services: uploads, rejections and the MedMNIST built-ins."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from django.conf import settings

from classifier import selectors, services
from classifier.models import Dataset, Visibility
from medml import dataset_io
from medml.data import SPLITS
from tests.factories import (
    TINY_CLASS_COUNTS,
    ModelVersionFactory,
    UserFactory,
    class_folder_members,
    class_folder_zip,
    medmnist_arrays,
    npz_bytes,
    png_bytes,
    zip_bytes,
)
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

BREAST_SHA256 = "3a22d2a4625e7dd8903f0f59030e81a3d0c222bece2e5e10927456cb50efdec1"


def shared_file(name: str) -> Path:
    path = Path(settings.MEDMNIST_DIR, name)
    if not path.is_file():
        pytest.skip(f"{name} is not in MEDMNIST_DIR ({settings.MEDMNIST_DIR})")
    return path


def stored_files(media_root: Path) -> list[Path]:
    return [path for path in Path(media_root).rglob("*") if path.is_file()]


def import_bytes(payload: bytes, filename: str, owner, **kwargs) -> Dataset:
    return services.dataset_import(
        source=io.BytesIO(payload), filename=filename, owner=owner, **kwargs
    )


@pytest.fixture
def owner():
    return UserFactory()


# --- a valid .npz --------------------------------------------------------------------------------


def test_it_imports_a_small_npz_as_one_private_dataset(owner, media_root):
    arrays = medmnist_arrays(channels=3)
    payload = npz_bytes(arrays)

    dataset = import_bytes(payload, "lesions.npz", owner, class_names=["a", "b", "c"])

    assert Dataset.objects.count() == 1
    dataset.refresh_from_db()
    assert dataset.name == "lesions"
    assert dataset.owner == owner
    assert dataset.visibility == Visibility.PRIVATE
    assert not dataset.is_builtin
    assert dataset.source == Dataset.Source.NPZ
    assert dataset.task == Dataset.Task.MULTI_CLASS
    assert dataset.class_names == ["a", "b", "c"]
    assert dataset.channels == 3
    assert (dataset.image_height, dataset.image_width) == (28, 28)
    assert dataset.split_counts == {"train": 30, "val": 9, "test": 12}
    assert dataset.class_counts == TINY_CLASS_COUNTS
    # Only the official keys: the upload is kept byte for byte.
    assert dataset.sha256 == hashlib.sha256(payload).hexdigest()
    assert dataset.size_bytes == len(payload)
    stored = Path(media_root, dataset.data_file.name)
    assert stored.is_file()
    assert stored.read_bytes() == payload


def test_it_stores_an_npz_with_extra_keys_in_the_official_layout(owner, media_root):
    arrays = medmnist_arrays(channels=None)
    payload = npz_bytes(arrays, notes=np.arange(3))

    dataset = import_bytes(payload, "scans.npz", owner)

    stored = Path(media_root, dataset.data_file.name).read_bytes()
    assert stored != payload
    assert dataset.sha256 == hashlib.sha256(stored).hexdigest()
    with np.load(io.BytesIO(stored), allow_pickle=False) as npz:
        assert set(npz.files) == {f"{split}_{kind}" for split in SPLITS
                                  for kind in ("images", "labels")}
        np.testing.assert_array_equal(npz["val_images"], arrays["val_images"])
        np.testing.assert_array_equal(npz["test_labels"], arrays["test_labels"])
    assert dataset.channels == 1
    assert dataset.class_names == ["class 0", "class 1", "class 2"]


def test_it_marks_two_class_datasets_as_binary(owner):
    counts = {"train": [6, 4], "val": [2, 2], "test": [3, 2]}

    dataset = import_bytes(npz_bytes(medmnist_arrays(counts)), "pair.npz", owner)

    assert dataset.task == Dataset.Task.BINARY
    assert dataset.class_counts == counts


def test_it_gives_each_import_of_one_name_its_own_slug(owner):
    first = import_bytes(npz_bytes(), "same.npz", owner)
    second = import_bytes(npz_bytes(), "same.npz", owner)

    assert first.slug != second.slug
    assert first.data_file.name != second.data_file.name
    assert Dataset.objects.count() == 2


# --- official MedMNIST files: recognised by name and published checksum --------------------------


@pytest.mark.parametrize("filename", ["bloodmnist.npz", "breastmnist_64.npz"])
def test_a_file_only_named_like_an_official_one_is_an_ordinary_upload(owner, media_root,
                                                                      filename):
    payload = npz_bytes(medmnist_arrays(channels=3))

    dataset = import_bytes(payload, filename, owner)

    assert dataset.source == Dataset.Source.NPZ
    assert dataset.source_detail == filename
    assert dataset.class_names == ["class 0", "class 1", "class 2"]  # as for any .npz
    assert dataset.license == ""
    assert dataset.description == ""
    assert dataset.modality == ""
    assert dataset.source_preprocessing == {}
    assert dataset.owner == owner and not dataset.is_builtin
    assert Path(media_root, dataset.data_file.name).read_bytes() == payload


def test_a_spoofed_official_name_keeps_the_class_names_given(owner):
    dataset = import_bytes(npz_bytes(), "bloodmnist.npz", owner, class_names=["a", "b", "c"])

    assert dataset.source == Dataset.Source.NPZ
    assert dataset.class_names == ["a", "b", "c"]


def test_an_upload_of_the_official_file_is_recognised_by_its_checksum(owner):
    payload = shared_file("breastmnist.npz").read_bytes()

    dataset = import_bytes(payload, "breastmnist.npz", owner)

    assert dataset.source == Dataset.Source.MEDMNIST
    assert dataset.sha256 == BREAST_SHA256
    assert dataset.class_names == ["malignant", "normal, benign"]
    assert dataset.license == "CC BY 4.0"
    assert dataset.source_preprocessing == services.MEDMNIST_PREPROCESSING["breastmnist"]
    assert dataset.owner == owner and dataset.visibility == Visibility.PRIVATE


def test_the_official_bytes_under_another_size_name_are_not_official(owner):
    payload = shared_file("breastmnist.npz").read_bytes()  # the 28x28 file, named as the 64x64

    dataset = import_bytes(payload, "breastmnist_64.npz", owner)

    assert dataset.source == Dataset.Source.NPZ
    assert dataset.license == ""


# --- a zip of class folders ----------------------------------------------------------------------


def test_it_imports_a_zip_of_class_folders_with_a_stratified_split(owner, media_root):
    payload = class_folder_zip({"benign": 10, "malignant": 20}, size=(16, 16))

    dataset = import_bytes(payload, "ultrasound.zip", owner)

    assert dataset.source == Dataset.Source.IMAGE_ZIP
    assert dataset.class_names == ["benign", "malignant"]
    assert dataset.task == Dataset.Task.BINARY
    assert (dataset.image_height, dataset.image_width, dataset.channels) == (16, 16, 3)
    # 70/10/20 per class: every class is in every split, in proportion.
    assert dataset.class_counts == {"train": [7, 14], "val": [1, 2], "test": [2, 4]}
    assert dataset.split_counts == {"train": 21, "val": 3, "test": 6}
    stored = Path(media_root, dataset.data_file.name)
    assert dataset.sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()
    arrays = dataset_io.load_dataset_npz(stored, class_names=dataset.class_names)
    assert arrays.images("train").shape == (21, 16, 16, 3)


def test_it_names_zip_classes_as_told(owner):
    dataset = import_bytes(class_folder_zip(), "u.zip", owner, class_names=["normal", "tumour"])

    assert dataset.class_names == ["normal", "tumour"]


# --- rejected input ------------------------------------------------------------------------------


def _without(arrays: dict, key: str) -> dict:
    return {k: v for k, v in arrays.items() if k != key}


def _with(arrays: dict, **changes) -> dict:
    return {**arrays, **changes}


_ARRAYS = medmnist_arrays()
def _with_method(archive: bytes, method: int) -> bytes:
    """``archive`` with its first member marked as compressed by ``method``."""
    data = bytearray(archive)
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    data[local + 8:local + 10] = method.to_bytes(2, "little")
    data[central + 10:central + 12] = method.to_bytes(2, "little")
    return bytes(data)


_PICKLED_LABELS = np.array([[0], [1], [2]] * 10, dtype=object)

BAD_UPLOADS = {
    "missing key": ("data.npz", npz_bytes(_without(_ARRAYS, "val_labels")), {},
                    "missing key 'val_labels'"),
    "float images": ("data.npz", npz_bytes(_with(
        _ARRAYS, train_images=_ARRAYS["train_images"].astype(np.float32))), {},
        "train_images has dtype float32; expected uint8"),
    "label out of range": ("data.npz", npz_bytes(), {"class_names": ["a", "b"]},
                           "label 2 in train_labels is out of range for 2 classes"),
    "empty split": ("data.npz", npz_bytes(_with(
        _ARRAYS, test_images=_ARRAYS["test_images"][:0], test_labels=_ARRAYS["test_labels"][:0]
    )), {}, "split 'test' is empty"),
    "pickled objects": ("data.npz", npz_bytes(_with(_ARRAYS, train_labels=_PICKLED_LABELS)), {},
                        "object arrays are not allowed"),
    "corrupt npz": ("data.npz", b"PK\x03\x04 this is not really a zip archive", {},
                    "not a valid .npz file"),
    "truncated npz": ("data.npz", npz_bytes()[:2000], {}, "not a valid .npz file"),
    "unsupported type": ("data.csv", b"a,b\n1,2\n", {}, "unsupported file type '.csv'"),
    "zip path traversal": ("data.zip", zip_bytes({
        **class_folder_members(), "../escape/img00.png": png_bytes(),
    }), {}, "member '../escape/img00.png' escapes the archive"),
    "zip absolute member": ("data.zip", zip_bytes({
        **class_folder_members(), "/etc/cron.d/img.png": png_bytes(),
    }), {}, "has an absolute path"),
    "zip symlink member": ("data.zip", zip_bytes(
        class_folder_members(), symlinks={"benign/link.png": "/etc/passwd"},
    ), {}, "member 'benign/link.png' is a symbolic link"),
    "non-image png": ("data.zip", zip_bytes({
        **class_folder_members(), "benign/notes.png": b"these are my notes, not an image",
    }), {}, "'benign/notes.png' is not a readable image"),
    "zip of one class": ("data.zip", class_folder_zip({"only": 9}), {},
                         "the archive has 1 class folder; at least 2 are needed"),
    "corrupt zip": ("data.zip", b"definitely not a zip", {}, "not a valid zip archive"),
    # Names given for a zip were only checked when the arrays were rewritten, outside the
    # handler: the error escaped as a DatasetFormatError (a 500, a traceback in the command).
    "repeated zip class names": ("data.zip", class_folder_zip(), {"class_names": ["a", "a"]},
                                 "class names are not unique"),
    "empty zip class name": ("data.zip", class_folder_zip(), {"class_names": ["a", ""]},
                             "class names must not be empty"),
    "overlong class folder": ("data.zip", class_folder_zip({"a": 3, "b" * 300: 3}), {},
                              "has 300 characters; the limit is 255"),
    "image_size for an npz": ("data.npz", npz_bytes(), {"image_size": 64},
                              "image_size resizes the images of a .zip"),
    # zipfile cannot read deflate64 (what some archivers use for large files): that raised
    # NotImplementedError, outside the handler.
    "deflate64 member": ("data.zip", _with_method(class_folder_zip(), 9), {},
                         "uses zip compression method 9, which cannot be read"),
}


@pytest.mark.parametrize(("filename", "payload", "kwargs", "reason"), BAD_UPLOADS.values(),
                         ids=BAD_UPLOADS.keys())
def test_it_rejects_bad_input_with_the_reason_and_stores_nothing(
    owner, media_root, filename, payload, kwargs, reason
):
    with pytest.raises(services.DatasetImportError) as excinfo:
        import_bytes(payload, filename, owner, **kwargs)

    assert reason in str(excinfo.value)
    assert str(excinfo.value).startswith(f"{filename}: ")
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_rejects_an_archive_with_more_members_than_the_limit(owner, media_root, settings):
    settings.DATASET_IMPORT_MAX_MEMBERS = 5
    payload = class_folder_zip({"benign": 3, "malignant": 3})

    with pytest.raises(services.DatasetImportError, match="archive has 6 members; the limit is 5"):
        import_bytes(payload, "many.zip", owner)

    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_applies_the_member_limit_to_npz_files_too(owner, settings):
    settings.DATASET_IMPORT_MAX_MEMBERS = 5

    with pytest.raises(services.DatasetImportError, match="archive has 6 members"):
        import_bytes(npz_bytes(), "six-keys.npz", owner)


def test_it_rejects_more_class_names_than_zip_folders(owner, media_root):
    with pytest.raises(services.DatasetImportError, match="3 class names were given but the "
                       "archive has 2 class folders"):
        import_bytes(class_folder_zip(), "u.zip", owner, class_names=["a", "b", "c"])

    assert stored_files(media_root) == []


def test_it_removes_the_stored_file_when_the_row_cannot_be_written(owner, media_root,
                                                                   monkeypatch):
    def fail(**fields):
        raise RuntimeError("database went away")

    monkeypatch.setattr(services, "_create_dataset_row", fail)

    with pytest.raises(RuntimeError, match="database went away"):
        import_bytes(npz_bytes(), "tiny.npz", owner)

    assert stored_files(media_root) == []


def test_it_finds_another_slug_when_a_concurrent_import_took_the_chosen_one(owner, media_root,
                                                                         monkeypatch):
    taken = import_bytes(npz_bytes(), "scans.npz", owner)
    chosen = iter([taken.slug])  # what a second import computed before the first one committed
    unique_slug = services._unique_slug
    monkeypatch.setattr(services, "_unique_slug", lambda name: next(chosen, None) or
                        unique_slug(name))

    second = import_bytes(npz_bytes(), "scans.npz", owner)

    assert second.slug not in ("", taken.slug)
    assert Dataset.objects.count() == 2
    assert len(stored_files(media_root)) == 2


def test_two_imports_of_one_file_read_their_own_class_names(owner):
    payload = npz_bytes()  # stored byte for byte: both rows have the same sha256
    first = import_bytes(payload, "a.npz", owner)
    second = import_bytes(payload, "b.npz", owner, class_names=["x", "y", "z"])
    assert first.sha256 == second.sha256

    assert selectors.dataset_arrays(dataset=first).class_names == ["class 0", "class 1", "class 2"]
    assert selectors.dataset_arrays(dataset=second).class_names == ["x", "y", "z"]


# --- deletion ------------------------------------------------------------------------------------


def test_it_refuses_to_delete_a_dataset_that_training_jobs_use(owner, media_root):
    dataset = import_bytes(npz_bytes(), "tiny.npz", owner)
    TrainingJob.objects.create(owner=owner, dataset=dataset, config={}, total_epochs=2)

    with pytest.raises(services.DatasetImportError,
                       match=r"^this dataset is still used by training jobs \(1\)$"):
        services.dataset_delete(dataset=dataset)

    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert Path(media_root, dataset.data_file.name).is_file()


def test_it_names_models_and_jobs_that_use_a_dataset(owner):
    dataset = import_bytes(npz_bytes(), "tiny.npz", owner)
    ModelVersionFactory(dataset=dataset)
    for _ in range(2):
        TrainingJob.objects.create(owner=owner, dataset=dataset, config={}, total_epochs=2)

    with pytest.raises(services.DatasetImportError, match=r"trained models \(1\) and training "
                       r"jobs \(2\)"):
        services.dataset_delete(dataset=dataset)


def test_it_refuses_a_delete_when_a_job_starts_using_the_dataset_meanwhile(owner, media_root,
                                                                          monkeypatch):
    dataset = import_bytes(npz_bytes(), "tiny.npz", owner)
    TrainingJob.objects.create(owner=owner, dataset=dataset, config={}, total_epochs=2)
    uses_of = services._uses_of
    answers = iter([""])  # the check ran before the job was created
    monkeypatch.setattr(services, "_uses_of", lambda d: next(answers, None) or uses_of(d))

    with pytest.raises(services.DatasetImportError, match="still used by training jobs"):
        services.dataset_delete(dataset=dataset)

    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert Path(media_root, dataset.data_file.name).is_file()


# --- MedMNIST built-ins --------------------------------------------------------------------------


def test_it_imports_breastmnist_from_the_shared_folder_as_a_public_builtin(media_root):
    shared_file("breastmnist.npz")

    dataset, created = services.builtin_dataset_import(flag="breastmnist")

    assert created
    assert dataset.name == "BreastMNIST"
    assert dataset.is_builtin
    assert dataset.owner is None
    assert dataset.visibility == Visibility.PUBLIC
    assert dataset.source == Dataset.Source.MEDMNIST
    assert dataset.source_detail == "breastmnist.npz"
    assert dataset.sha256 == BREAST_SHA256
    assert dataset.class_names == ["malignant", "normal, benign"]
    assert dataset.task == Dataset.Task.BINARY
    assert dataset.channels == 1
    assert dataset.license == "CC BY 4.0"
    assert dataset.modality == "Breast ultrasound"
    assert dataset.split_counts == {"train": 546, "val": 78, "test": 156}
    assert dataset.class_counts == {"train": [147, 399], "val": [21, 57], "test": [42, 114]}
    stored = Path(media_root, dataset.data_file.name)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == BREAST_SHA256
    # Any user sees it.
    assert Dataset.objects.visible_to(UserFactory()).filter(pk=dataset.pk).exists()


def test_it_reuses_an_identical_builtin_on_a_second_import(media_root):
    shared_file("breastmnist.npz")
    first, _ = services.builtin_dataset_import(flag="breastmnist")

    again, created = services.builtin_dataset_import(flag="breastmnist")

    assert not created
    assert again.pk == first.pk
    assert Dataset.objects.count() == 1
    assert len(stored_files(media_root)) == 1


def test_it_refuses_to_replace_a_builtin_whose_file_changed(tmp_path, published_checksums):
    def release(seed: int) -> None:  # as if MedMNIST published this file
        payload = npz_bytes(medmnist_arrays({"train": [6, 4], "val": [2, 2], "test": [3, 2]},
                                            channels=None, seed=seed))
        (tmp_path / "breastmnist.npz").write_bytes(payload)
        published_checksums("breastmnist.npz", payload)

    release(seed=0)
    services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)
    release(seed=1)  # a new official file since the built-in was imported

    with pytest.raises(services.DatasetImportError, match="already exists with different contents"):
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert Dataset.objects.count() == 1


def test_it_refuses_a_builtin_whose_local_file_is_not_the_published_one(tmp_path, media_root):
    (tmp_path / "breastmnist.npz").write_bytes(npz_bytes(medmnist_arrays(
        {"train": [6, 4], "val": [2, 2], "test": [3, 2]}, channels=None)))

    with pytest.raises(services.DatasetImportError,
                       match=r"breastmnist\.npz has MD5 \w+, expected "
                             r"750601b1f35ba3300ea97c75c52ff8f6: it is not the official MedMNIST"):
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path, download=False)

    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_a_builtin_with_a_published_checksum_is_official(tmp_path, published_checksums):
    payload = npz_bytes(medmnist_arrays({"train": [6, 4], "val": [2, 2], "test": [3, 2]},
                                        channels=None))
    (tmp_path / "breastmnist.npz").write_bytes(payload)
    published_checksums("breastmnist.npz", payload)

    dataset, created = services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert created and dataset.is_builtin
    assert dataset.source == Dataset.Source.MEDMNIST
    assert dataset.class_names == ["malignant", "normal, benign"]
    assert dataset.license == "CC BY 4.0"


def test_it_imports_bloodmnist_from_the_shared_folder(media_root):
    source = shared_file("bloodmnist.npz")

    dataset, created = services.builtin_dataset_import(flag="bloodmnist")

    assert created
    assert dataset.name == "BloodMNIST"
    assert dataset.num_classes == 8
    assert dataset.class_names[0] == "basophil"
    assert dataset.class_names[7] == "platelet"
    assert dataset.total_images == 17092
    assert dataset.split_counts == {"train": 11959, "val": 1712, "test": 3421}
    assert dataset.class_counts["train"] == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
    assert dataset.channels == 3
    assert dataset.task == Dataset.Task.MULTI_CLASS
    assert dataset.size_bytes == source.stat().st_size
    assert Path(media_root, dataset.data_file.name).stat().st_size == source.stat().st_size


def test_it_says_the_file_is_missing_when_downloads_are_off(tmp_path, media_root):
    with pytest.raises(services.DatasetImportError,
                       match=f"breastmnist.npz not found in {tmp_path}"):
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path, download=False)

    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_points_at_medmnist_dir_when_the_download_fails(tmp_path, media_root, settings,
                                                           monkeypatch):
    settings.MEDMNIST_DOWNLOAD_TIMEOUT = 1.0
    requested = []

    def unreachable(url, timeout=None):
        requested.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # The test must not depend on whether this machine happens to be online.
    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    started = time.monotonic()

    with pytest.raises(services.DatasetImportError) as excinfo:
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert time.monotonic() - started < 5
    message = str(excinfo.value)
    assert "could not download breastmnist" in message
    assert "MEDMNIST_DIR" in message
    assert "breastmnist.npz" in message
    assert requested == [(dataset_io.medmnist_info("breastmnist")["url"], 1.0)]
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []
    assert list(tmp_path.iterdir()) == []


def test_it_imports_a_downloaded_file_whose_md5_matches(tmp_path, monkeypatch):
    official = shared_file("breastmnist.npz").read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(official))

    dataset, created = services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert created
    assert dataset.sha256 == BREAST_SHA256
    assert list(tmp_path.iterdir()) == []  # downloads go to a temporary folder


def test_a_download_reports_its_progress_in_bytes(tmp_path, monkeypatch, published_checksums):
    # About 2.5 MB of incompressible images: three 1 MiB reads.
    official = npz_bytes(medmnist_arrays({"train": [400, 400], "val": [100, 100],
                                          "test": [50, 50]}))
    published_checksums("breastmnist.npz", official)
    response = _Response(official, headers={"Content-Length": str(len(official))})
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: response)
    reports = []

    services.builtin_dataset_import(flag="breastmnist", folder=tmp_path,
                                    download_progress=lambda done, total: reports.append((done, total)))

    assert len(reports) == -(-len(official) // (1 << 20)) == 3
    assert reports[-1] == (len(official), len(official))
    assert [done for done, _ in reports] == sorted(done for done, _ in reports)


def test_it_rejects_a_download_with_the_wrong_md5(tmp_path, media_root, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen",
                        lambda url, timeout=None: io.BytesIO(npz_bytes()))

    with pytest.raises(services.DatasetImportError, match=r"downloaded breastmnist has MD5 \w+, "
                       r"expected 750601b1f35ba3300ea97c75c52ff8f6"):
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


class _Response(io.BytesIO):
    """What ``urlopen`` answers: a body, its headers, and how much of it was read."""

    def __init__(self, data: bytes, headers: dict | None = None):
        super().__init__(data)
        self.headers = headers or {}
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_it_stops_a_download_past_the_size_cap_and_keeps_nothing(tmp_path, settings,
                                                                 monkeypatch):
    settings.MEDMNIST_DOWNLOAD_MAX_BYTES = 3 * 1024 * 1024
    response = _Response(b"\0" * (5 * 1024 * 1024))  # no Content-Length: counted as it arrives
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: response)
    target = tmp_path / "breastmnist.npz"

    with pytest.raises(services.DatasetImportError,
                       match=r"more than 3145728 bytes arrived, over MEDMNIST_DOWNLOAD_MAX_BYTES"):
        services._download_medmnist("breastmnist", 28, target, timeout=1.0)

    assert response.bytes_read <= 4 * 1024 * 1024  # stopped reading at the cap
    assert list(tmp_path.iterdir()) == []


def test_it_refuses_a_download_whose_declared_size_is_past_the_cap(tmp_path, media_root,
                                                                   settings, monkeypatch):
    settings.MEDMNIST_DOWNLOAD_MAX_BYTES = 1000
    response = _Response(b"\0" * 10, headers={"Content-Length": "5000000000"})
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: response)

    with pytest.raises(services.DatasetImportError,
                       match=r"its Content-Length is 5000000000 bytes, over "
                             r"MEDMNIST_DOWNLOAD_MAX_BYTES \(1000\); nothing was kept"):
        services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    assert response.bytes_read == 0
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []
    assert list(tmp_path.iterdir()) == []


def test_it_rejects_a_flag_that_is_not_a_medmnist_dataset(tmp_path):
    with pytest.raises(services.DatasetImportError, match="'catsmnist' is not a MedMNIST 2D"):
        services.builtin_dataset_import(flag="catsmnist", folder=tmp_path)

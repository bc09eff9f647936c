"""Tests of the management commands: import_dataset, ensure_admin, import_medmnist, unlock_login."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from classifier.models import Dataset, Visibility
from tests.factories import (
    TINY_CLASS_COUNTS,
    UserFactory,
    class_folder_zip,
    medmnist_arrays,
    npz_bytes,
)

pytestmark = pytest.mark.django_db

User = get_user_model()


def run(*args, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def shared_folder(settings) -> Path:
    folder = Path(settings.MEDMNIST_DIR)
    if not (folder / "breastmnist.npz").is_file():
        pytest.skip(f"breastmnist.npz is not in MEDMNIST_DIR ({folder})")
    return folder


# --- import_dataset ------------------------------------------------------------------------------


def test_import_dataset_imports_an_npz_for_the_named_owner(tmp_path, media_root):
    owner = UserFactory(username="carol")
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    out, _ = run("import_dataset", str(path), owner="carol", name="Tiny",
                 class_names="a,b,c")

    dataset = Dataset.objects.get()
    assert dataset.owner == owner
    assert dataset.name == "Tiny"
    assert dataset.visibility == Visibility.PRIVATE
    assert dataset.class_names == ["a", "b", "c"]
    assert dataset.class_counts == TINY_CLASS_COUNTS
    assert f"Imported Tiny (id {dataset.pk})" in out
    assert Path(media_root, dataset.data_file.name).is_file()


def test_import_dataset_strips_spaces_around_class_names(tmp_path):
    UserFactory(username="carol")
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    run("import_dataset", str(path), owner="carol", class_names=" adenoma, carcinoma ,normal ")

    assert Dataset.objects.get().class_names == ["adenoma", "carcinoma", "normal"]


def test_import_dataset_defaults_to_the_first_superuser_and_can_publish(tmp_path):
    admin = UserFactory(superuser=True)
    UserFactory(superuser=True)
    path = tmp_path / "u.zip"
    path.write_bytes(class_folder_zip())

    run("import_dataset", str(path), public=True, seed=3)

    dataset = Dataset.objects.get()
    assert dataset.owner == admin
    assert dataset.visibility == Visibility.PUBLIC
    assert dataset.source == Dataset.Source.IMAGE_ZIP


def test_import_dataset_fails_with_the_reason_for_a_bad_file(tmp_path, media_root):
    UserFactory(username="carol")
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not an npz file")

    with pytest.raises(CommandError, match=r"broken\.npz: not a valid \.npz file"):
        run("import_dataset", str(path), owner="carol")

    assert not Dataset.objects.exists()
    assert not any(p.is_file() for p in Path(media_root).rglob("*"))


def test_import_dataset_fails_for_a_missing_file(tmp_path):
    UserFactory(username="carol")

    with pytest.raises(CommandError, match="does not exist"):
        run("import_dataset", str(tmp_path / "nowhere.npz"), owner="carol")


def test_import_dataset_fails_without_an_owner(tmp_path):
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    with pytest.raises(CommandError, match="no owner: pass --owner USERNAME"):
        run("import_dataset", str(path))

    assert not Dataset.objects.exists()


def test_import_dataset_names_an_unknown_owner(tmp_path):
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    with pytest.raises(CommandError, match="no user 'nobody'"):
        run("import_dataset", str(path), owner="nobody")

    assert not Dataset.objects.exists()


def test_import_dataset_refuses_a_negative_seed_as_a_bad_argument(tmp_path):
    UserFactory(username="carol")
    path = tmp_path / "u.zip"
    path.write_bytes(class_folder_zip())

    with pytest.raises(CommandError, match="argument --seed: must be 0 or more, got -1"):
        run("import_dataset", str(path), "--owner", "carol", "--seed", "-1")

    assert not Dataset.objects.exists()


def test_import_dataset_says_a_folder_is_not_a_file(tmp_path):
    UserFactory(username="carol")

    with pytest.raises(CommandError, match=r"is not a file: give a \.npz or \.zip file"):
        run("import_dataset", str(tmp_path), owner="carol")


def test_import_dataset_reports_an_unreadable_file_in_one_line(tmp_path, monkeypatch):
    UserFactory(username="carol")
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    def refused(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(CommandError, match=r"cannot read .*tiny\.npz: Permission denied"):
        run("import_dataset", str(path), owner="carol")


def test_import_dataset_ctrl_c_exits_with_the_interrupted_status(tmp_path, monkeypatch):
    from classifier import services

    UserFactory(username="carol")
    path = tmp_path / "tiny.npz"
    path.write_bytes(npz_bytes())

    def interrupted(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "dataset_import", interrupted)
    with pytest.raises(CommandError, match=r"interrupted: tiny\.npz was not imported") as raised:
        run("import_dataset", str(path), owner="carol")

    assert raised.value.returncode == 130


# --- ensure_admin --------------------------------------------------------------------------------


@pytest.fixture
def var_dir(settings, tmp_path, monkeypatch):
    for name in ("DJANGO_SUPERUSER_USERNAME", "DJANGO_SUPERUSER_PASSWORD",
                 "DJANGO_SUPERUSER_EMAIL"):
        monkeypatch.delenv(name, raising=False)
    settings.VAR_DIR = tmp_path
    return tmp_path


def test_ensure_admin_creates_an_admin_with_a_random_password_file(var_dir):
    out, _ = run("ensure_admin")

    admin = User.objects.get()
    password_file = var_dir / "admin-password.txt"
    username, password = password_file.read_text().splitlines()
    assert (admin.username, admin.is_superuser, admin.is_staff) == ("admin", True, True)
    assert username == "admin"
    assert len(password) >= 16
    assert admin.check_password(password)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert password in out


def test_ensure_admin_generates_a_different_password_per_installation(var_dir):
    run("ensure_admin")
    first = (var_dir / "admin-password.txt").read_text()
    User.objects.all().delete()

    run("ensure_admin")

    assert (var_dir / "admin-password.txt").read_text() != first


def test_ensure_admin_leaves_an_existing_admin_alone(var_dir):
    run("ensure_admin")
    password_file = var_dir / "admin-password.txt"
    first = password_file.read_text()

    out, _ = run("ensure_admin")

    assert User.objects.count() == 1
    assert password_file.read_text() == first
    assert "already exists" in out
    assert str(password_file) in out


def test_ensure_admin_refuses_plainly_when_the_username_belongs_to_a_non_admin(var_dir):
    UserFactory(username="admin")

    with pytest.raises(CommandError, match="a user 'admin' exists but is not an admin"):
        run("ensure_admin")

    assert not User.objects.filter(is_superuser=True).exists()
    assert not (var_dir / "admin-password.txt").exists()


def test_ensure_admin_refuses_an_empty_username_setting(var_dir, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", " ")

    with pytest.raises(CommandError, match="DJANGO_SUPERUSER_USERNAME is empty"):
        run("ensure_admin")

    assert not User.objects.exists()


def test_ensure_admin_replaces_a_stale_password_file_with_a_private_one(var_dir):
    password_file = var_dir / "admin-password.txt"
    password_file.write_text("old\nsecret\n")
    password_file.chmod(0o644)

    run("ensure_admin")

    username, password = password_file.read_text().splitlines()
    assert User.objects.get(username=username).check_password(password)
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600


def test_ensure_admin_takes_the_account_from_the_environment(var_dir, monkeypatch):
    monkeypatch.setenv("DJANGO_SUPERUSER_USERNAME", "ops")
    monkeypatch.setenv("DJANGO_SUPERUSER_PASSWORD", "correct horse battery")
    monkeypatch.setenv("DJANGO_SUPERUSER_EMAIL", "ops@example.org")

    out, _ = run("ensure_admin")

    admin = User.objects.get()
    assert (admin.username, admin.email, admin.is_superuser) == ("ops", "ops@example.org", True)
    assert admin.check_password("correct horse battery")
    assert not (var_dir / "admin-password.txt").exists()
    assert "correct horse battery" not in out


# --- import_medmnist -----------------------------------------------------------------------------


def test_import_medmnist_imports_breastmnist_from_a_folder(settings):
    folder = shared_folder(settings)

    out, _ = run("import_medmnist", "breastmnist", folder=str(folder))
    again, _ = run("import_medmnist", "BreastMNIST", folder=str(folder))

    dataset = Dataset.objects.get()
    assert dataset.is_builtin
    assert dataset.total_images == 780
    assert "BreastMNIST: imported (780 images, sha256 3a22d2a4625e7dd8" in out
    assert "BreastMNIST: already present" in again


def test_import_medmnist_keeps_going_past_missing_files_and_fails_at_the_end(settings, tmp_path):
    settings.MEDMNIST_IMPORT = ["bloodmnist", "breastmnist"]
    out, err = io.StringIO(), io.StringIO()

    with pytest.raises(CommandError) as raised:
        call_command("import_medmnist", all=True, folder=str(tmp_path), no_download=True,
                     keep_going=True, stdout=out, stderr=err)

    assert not Dataset.objects.exists()
    assert f"bloodmnist: not imported: bloodmnist.npz not found in {tmp_path}" in err.getvalue()
    assert f"breastmnist: not imported: breastmnist.npz not found in {tmp_path}" in err.getvalue()
    message = str(raised.value)
    assert message.startswith("2 dataset(s) not imported (bloodmnist, breastmnist)")
    assert f"Put the official .npz files in {tmp_path}" in message
    assert raised.value.returncode == 1


def test_import_medmnist_rerun_finds_a_dataset_imported_earlier_without_its_file(
        published_checksums, tmp_path):
    data = npz_bytes(medmnist_arrays())
    published_checksums("bloodmnist.npz", data)
    first, empty = tmp_path / "first", tmp_path / "empty"
    first.mkdir()
    empty.mkdir()
    (first / "bloodmnist.npz").write_bytes(data)
    out, _ = run("import_medmnist", "bloodmnist", folder=str(first))
    assert "BloodMNIST: imported" in out

    # Later, offline, with the file gone (it was downloaded, or the folder moved).
    again, _ = run("import_medmnist", "bloodmnist", "BLOODMNIST", folder=str(empty),
                   no_download=True)

    assert again.count("BloodMNIST: already present") == 1
    assert Dataset.objects.count() == 1


def test_import_medmnist_refuses_unknown_datasets_naming_the_known_ones(tmp_path):
    with pytest.raises(CommandError) as raised:
        run("import_medmnist", "bloodmnist", "foomnist", "../../etc/x", folder=str(tmp_path),
            no_download=True)

    message = str(raised.value)
    assert message.startswith("unknown MedMNIST datasets foomnist, ../../etc/x; choose from ")
    assert "bloodmnist, breastmnist" in message
    assert "organmnist3d" not in message  # 3D datasets are not importable
    assert not Dataset.objects.exists()


def test_import_medmnist_refuses_a_missing_folder(tmp_path):
    with pytest.raises(CommandError, match=r"--folder .*nowhere is not a folder"):
        run("import_medmnist", "bloodmnist", folder=str(tmp_path / "nowhere"))


def test_import_medmnist_stops_at_the_first_failure_without_keep_going(tmp_path):
    with pytest.raises(CommandError, match="bloodmnist: not imported"):
        run("import_medmnist", "bloodmnist", "breastmnist", folder=str(tmp_path),
            no_download=True)

    assert not Dataset.objects.exists()


def test_import_medmnist_needs_names_or_all():
    with pytest.raises(CommandError, match=r"name the datasets to import \(e.g. bloodmnist\), "
                                           "or pass --all"):
        run("import_medmnist")


# --- unlock_login --------------------------------------------------------------------------------


def test_unlock_login_warns_when_no_web_server_can_see_the_unlock(settings):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

    out, err = run("unlock_login", "alice")

    assert "Log-in unlocked for 'alice'" in out
    assert "no shared cache was found" in err
    assert "REDIS_URL" in err


def test_unlock_login_knows_a_redis_cache_is_shared(settings):
    from medplatform.management.commands.unlock_login import shares_a_cache

    settings.CACHES = {"default": {"BACKEND": "medplatform.cache.RedisCache",
                                   "LOCATION": "unix:///nowhere/redis.sock"}}
    assert shares_a_cache()
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    assert not shares_a_cache()

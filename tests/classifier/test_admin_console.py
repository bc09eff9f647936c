"""The admin console: deletes go through the services (files go with rows, refusals are shown),
registry rows cannot be added or rewritten, and built-ins are re-imported from the local folder.

Every request goes to the real admin URLs as a superuser; stored files are looked up in the
test's media folder once the delete's transaction has committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.test import Client

from classifier import services, services_registry
from classifier.models import Dataset, ModelEvaluation, ModelVersion, Prediction, Visibility
from tests.factories import DatasetFactory, UserFactory, medmnist_arrays, npz_bytes
from training.models import InferenceJob, TrainingJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(UserFactory(username="root", superuser=True))
    return client


@pytest.fixture
def owner():
    return UserFactory(username="owner")


@pytest.fixture
def local_copies(settings, tmp_path):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    settings.WORK_DIR = tmp_path / "work"
    return settings


def stored(media_root, name: str) -> bool:
    return Path(media_root, name).is_file()


def register(dataset, owner, tmp_path, *, name: str) -> ModelVersion:
    artifact = tmp_path / f"{name}.keras"
    artifact.write_bytes(f"weights of {name}".encode())
    return services.model_version_register(
        name=name, architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=artifact, config={},
    )


def predict(model: ModelVersion, user) -> Prediction:
    image = default_storage.save("uploads/scan.png", ContentFile(b"png bytes"))
    return Prediction.objects.create(
        owner=user, model_version=model, image=image, image_sha256="1" * 64,
        predicted_index=0, predicted_label="adenoma", probabilities=[1.0, 0.0, 0.0],
    )


def evaluate(model: ModelVersion) -> ModelEvaluation:
    probabilities = default_storage.save("evaluations/probs.npy", ContentFile(b"npy bytes"))
    return ModelEvaluation.objects.create(
        model_version=model, dataset=model.dataset, dataset_sha256=model.dataset.sha256,
        split="test", n=1, predicted=[0], probabilities=probabilities,
    )


def messages_of(response) -> list[str]:
    return [str(message) for message in response.context["messages"]]


def delete_selected(client, model_name: str, rows) -> object:
    return client.post(f"/admin/classifier/{model_name}/", {
        "action": "delete_selected", "_selected_action": [row.pk for row in rows], "post": "yes",
    }, follow=True)


# --- datasets -------------------------------------------------------------------------------------


def test_deleting_a_dataset_in_the_admin_deletes_its_file(
        admin_client, owner, media_root, django_capture_on_commit_callbacks):
    dataset = DatasetFactory(owner=owner)
    assert stored(media_root, dataset.data_file.name)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/classifier/dataset/{dataset.pk}/delete/",
                                     {"post": "yes"})

    assert response.status_code == 302
    assert not Dataset.objects.exists()
    assert not stored(media_root, dataset.data_file.name)


def test_deleting_selected_datasets_in_the_admin_deletes_their_files(
        admin_client, owner, media_root, django_capture_on_commit_callbacks):
    first, second = DatasetFactory(owner=owner, seed=1), DatasetFactory(owner=owner, seed=2)

    with django_capture_on_commit_callbacks(execute=True):
        response = delete_selected(admin_client, "dataset", [first, second])

    assert response.status_code == 200
    assert "Successfully deleted 2 datasets." in messages_of(response)
    assert not Dataset.objects.exists()
    assert not stored(media_root, first.data_file.name)
    assert not stored(media_root, second.data_file.name)


def test_datasets_cannot_be_added_in_the_admin_only_imported(admin_client):
    assert admin_client.get("/admin/classifier/dataset/add/").status_code == 403
    response = admin_client.post("/admin/classifier/dataset/add/", {"name": "Empty"})

    assert response.status_code == 403
    assert not Dataset.objects.exists()
    assert admin_client.get("/admin/classifier/dataset/import/").status_code == 200


def upload(name: str, data: bytes):
    buffer = ContentFile(data)
    buffer.name = name
    return buffer


def test_an_admin_upload_is_imported(admin_client, media_root):
    response = admin_client.post("/admin/classifier/dataset/import/", {
        "file": upload("ward.npz", npz_bytes(medmnist_arrays())), "name": "Ward",
        "visibility": Visibility.PRIVATE})

    dataset = Dataset.objects.get()
    assert response.status_code == 302 and dataset.name == "Ward"
    assert stored(media_root, dataset.data_file.name)


def test_an_admin_upload_over_the_limit_stops_while_it_streams_in(
        admin_client, settings, media_root, spooled_uploads):
    temp_dir, spooled = spooled_uploads
    settings.DATASET_UPLOAD_MAX_BYTES = 256 * 1024

    response = admin_client.post("/admin/classifier/dataset/import/", {
        "file": upload("huge.npz", b"\0" * (4 * 1024 * 1024)), "visibility": Visibility.PUBLIC})

    assert response.status_code == 200
    assert response.context["form"].errors["file"] == [
        "the file 'huge.npz' is larger than the limit of 262144 bytes; nothing was stored"]
    assert 0 < sum(spooled) <= settings.DATASET_UPLOAD_MAX_BYTES
    assert list(temp_dir.iterdir()) == []
    assert not Dataset.objects.exists()
    assert not any(Path(media_root).rglob("*.npz"))


def test_the_admin_import_page_still_checks_its_csrf_token():
    client = Client(enforce_csrf_checks=True)
    client.force_login(UserFactory(username="root", superuser=True))
    response = client.post("/admin/classifier/dataset/import/", {
        "file": upload("ward.npz", npz_bytes(medmnist_arrays())), "visibility": Visibility.PUBLIC})

    assert response.status_code == 403
    assert not Dataset.objects.exists()


# --- models -------------------------------------------------------------------------------------


def test_deleting_a_model_deletes_its_artifact_evaluations_and_its_owners_predictions(
        admin_client, owner, media_root, tmp_path, local_copies,
        django_capture_on_commit_callbacks):
    model = register(DatasetFactory(owner=owner), owner, tmp_path, name="cnn")
    evaluation, prediction = evaluate(model), predict(model, owner)
    job = TrainingJob.objects.create(owner=owner, dataset=model.dataset, config={},
                                     status=TrainingJob.Status.SUCCEEDED, model_version=model)
    cache, exports = Path(local_copies.MODEL_CACHE_DIR), Path(local_copies.WORK_DIR, "exports")
    cache.mkdir(parents=True)
    exports.mkdir(parents=True)
    copies = [cache / f"{model.sha256}.keras", cache / f"{model.sha256}.onnx",
              exports / f"{model.sha256[:16]}-samples-abc123.zip"]
    for path in copies:
        path.write_bytes(b"copy")
    files = [model.artifact.name, evaluation.probabilities.name, prediction.image.name]
    assert all(stored(media_root, name) for name in files)

    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(f"/admin/classifier/modelversion/{model.pk}/delete/",
                                     {"post": "yes"})

    assert response.status_code == 302
    assert not ModelVersion.objects.exists()
    assert not ModelEvaluation.objects.exists() and not Prediction.objects.exists()
    assert not any(stored(media_root, name) for name in files)
    assert not any(path.exists() for path in copies)
    job.refresh_from_db()
    assert job.model_version is None  # the training job's record is kept


def test_a_model_with_other_users_predictions_is_not_deleted_and_the_admin_says_why(
        admin_client, owner, media_root, tmp_path, django_capture_on_commit_callbacks):
    model = register(DatasetFactory(owner=owner, visibility=Visibility.PUBLIC), owner, tmp_path,
                     name="shared")
    model.visibility = Visibility.PUBLIC
    model.save()
    theirs = predict(model, UserFactory(username="bob"))

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = admin_client.post(f"/admin/classifier/modelversion/{model.pk}/delete/",
                                     {"post": "yes"}, follow=True)

    assert response.redirect_chain[-1][0] == f"/admin/classifier/modelversion/{model.pk}/change/"
    assert messages_of(response) == [
        f"{model} was not deleted: other users have 1 prediction made with {model}; "
        "they keep their history."
    ]
    assert not callbacks
    assert ModelVersion.objects.filter(pk=model.pk).exists()
    assert Prediction.objects.filter(pk=theirs.pk).exists()
    assert stored(media_root, model.artifact.name) and stored(media_root, theirs.image.name)


def test_deleting_selected_models_deletes_those_it_may_and_names_those_it_refused(
        admin_client, owner, media_root, tmp_path, django_capture_on_commit_callbacks):
    dataset = DatasetFactory(owner=owner)
    spare = register(dataset, owner, tmp_path, name="spare")
    batch = register(dataset, owner, tmp_path, name="batch")
    job = InferenceJob.objects.create(
        owner=owner, model_version=batch, source=InferenceJob.Source.UPLOAD,
        results_csv=default_storage.save("inference/results/out.csv", ContentFile(b"a,b")),
    )

    with django_capture_on_commit_callbacks(execute=True):
        response = delete_selected(admin_client, "modelversion", [spare, batch])

    assert messages_of(response) == [
        f"{batch} was not deleted: 1 batch inference job ran {batch}; the results would go "
        "with it.",
        "Successfully deleted 1 model version.",
    ]
    assert list(ModelVersion.objects.all()) == [batch]
    assert not stored(media_root, spare.artifact.name)
    assert stored(media_root, batch.artifact.name)
    assert InferenceJob.objects.filter(pk=job.pk).exists()
    assert stored(media_root, job.results_csv.name)


def test_models_cannot_be_added_in_the_admin(admin_client, owner):
    dataset = DatasetFactory(owner=owner)

    response = admin_client.post("/admin/classifier/modelversion/add/", {
        "name": "hand-made", "version": 1, "architecture": "compact_cnn", "dataset": dataset.pk,
        "visibility": Visibility.PUBLIC, "num_params": 0, "train_seconds": 0,
    })

    assert response.status_code == 403
    assert not ModelVersion.objects.exists()


def test_the_admin_changes_a_models_owner_and_visibility_but_not_what_was_registered(
        admin_client, owner, tmp_path):
    model = register(DatasetFactory(owner=owner), owner, tmp_path, name="cnn")
    other = DatasetFactory(owner=owner, seed=3)
    new_owner = UserFactory(username="carol")

    response = admin_client.post(f"/admin/classifier/modelversion/{model.pk}/change/", {
        "name": "renamed", "version": 9, "architecture": "resnet18", "dataset": other.pk,
        "owner": new_owner.pk, "visibility": Visibility.PUBLIC, "num_params": 1,
        "train_seconds": 1, "decision_threshold": "0.05", "sha256": "f" * 64,
    })

    assert response.status_code == 302
    model.refresh_from_db()
    assert (model.owner, model.visibility) == (new_owner, Visibility.PUBLIC)
    assert (model.name, model.version, model.architecture) == ("cnn", 1, "compact_cnn")
    assert model.dataset != other
    assert model.sha256 != "f" * 64
    assert model.decision_threshold is None


# --- predictions --------------------------------------------------------------------------------


def test_deleting_predictions_in_the_admin_deletes_their_images(
        admin_client, owner, media_root, tmp_path, django_capture_on_commit_callbacks):
    model = register(DatasetFactory(owner=owner), owner, tmp_path, name="cnn")
    one, two, three = (predict(model, owner) for _ in range(3))

    with django_capture_on_commit_callbacks(execute=True):
        single = admin_client.post(f"/admin/classifier/prediction/{one.pk}/delete/",
                                   {"post": "yes"})
        bulk = delete_selected(admin_client, "prediction", [two, three])

    assert single.status_code == 302 and bulk.status_code == 200
    assert not Prediction.objects.exists()
    assert not any(stored(media_root, p.image.name) for p in (one, two, three))


def test_predictions_are_viewed_in_the_admin_but_never_written_or_rewritten(
        admin_client, owner, tmp_path):
    prediction = predict(register(DatasetFactory(owner=owner), owner, tmp_path, name="cnn"), owner)
    url = f"/admin/classifier/prediction/{prediction.pk}/change/"
    assert admin_client.get("/admin/classifier/prediction/add/").status_code == 403
    page = admin_client.get(url)
    assert page.status_code == 200 and 'name="predicted_label"' not in page.content.decode()
    admin_client.post(url, {"predicted_label": "rewritten"})
    prediction.refresh_from_db()
    assert prediction.predicted_label != "rewritten"


# --- re-importing built-ins ---------------------------------------------------------------------


BREAST_COUNTS = {"train": [6, 6], "val": [3, 3], "test": [4, 4]}


@pytest.fixture
def medmnist_folder(settings, tmp_path):
    folder = tmp_path / "medmnist"
    folder.mkdir()
    settings.MEDMNIST_DIR = str(folder)
    return folder


@pytest.fixture
def write_official(medmnist_folder, published_checksums):
    """Writes a file into the MedMNIST folder and publishes its checksum as the official one."""

    def write(filename: str, data: bytes) -> None:
        (medmnist_folder / filename).write_bytes(data)
        published_checksums(filename, data)

    return write


def builtin_breast(write_official, folder: Path, size: int) -> Dataset:
    arrays = medmnist_arrays(BREAST_COUNTS, size=size, channels=1, seed=size)
    write_official(services.medmnist_filename("breastmnist", size), npz_bytes(arrays))
    dataset, created = services.builtin_dataset_import(flag="breastmnist", size=size,
                                                       folder=folder, download=False)
    assert created
    return dataset


def reimport(client, datasets):
    return client.post("/admin/classifier/dataset/", {
        "action": "reimport_builtins", "_selected_action": [d.pk for d in datasets],
    }, follow=True)


def test_reimporting_a_64x64_builtin_checks_the_64x64_file(admin_client, medmnist_folder,
                                                           write_official):
    large = builtin_breast(write_official, medmnist_folder, 64)
    # A different 28x28 file in the folder: reading it instead would import a second dataset.
    arrays = medmnist_arrays(BREAST_COUNTS, size=28, channels=1, seed=1)
    write_official("breastmnist.npz", npz_bytes(arrays))

    response = reimport(admin_client, [large])

    assert messages_of(response) == [f"{large.name}: checksum verified, unchanged."]
    assert list(Dataset.objects.all()) == [large]


def test_reimporting_a_builtin_never_downloads(admin_client, medmnist_folder, write_official,
                                               monkeypatch):
    builtin = builtin_breast(write_official, medmnist_folder, 28)
    (medmnist_folder / "breastmnist.npz").unlink()
    downloads = []

    def download(flag, size, target, timeout, progress=None):
        downloads.append((flag, size))
        raise services.DatasetImportError("no network in tests")

    monkeypatch.setattr(services, "_download_medmnist", download)

    response = reimport(admin_client, [builtin])

    assert downloads == []
    assert messages_of(response) == [
        f"{builtin.name}: breastmnist.npz not found in {medmnist_folder}"
    ]
    assert list(Dataset.objects.all()) == [builtin]


def test_the_reimport_action_names_a_builtin_whose_file_name_is_not_official(
        admin_client, medmnist_folder):
    builtin = DatasetFactory(builtin=True, filename="tiny-custom.npz")

    response = reimport(admin_client, [builtin])

    assert messages_of(response) == [
        f"{builtin.name}: tiny-custom.npz is not an official MedMNIST file name."
    ]
    assert list(Dataset.objects.all()) == [builtin]


def test_the_alias_audit_trail_names_and_finds_a_removed_alias(admin_client, owner, tmp_path):
    staff = UserFactory(username="stella", staff=True)
    dataset = DatasetFactory(owner=owner)
    model = register(dataset, owner, tmp_path, name="m")
    services_registry.model_alias_promote(model_version=model, user=staff, reason="best so far")
    services_registry.model_alias_remove(dataset=dataset, alias="production", user=staff,
                                         reason="withdrawn")

    page = admin_client.get("/admin/classifier/modelaliaschange/", {"q": "production"})

    assert page.status_code == 200
    table = page.content.decode().split('id="result_list"')[1].split("</table>")[0]
    rows = table.split("<tr")[2:]  # after the header row
    assert len(rows) == 2  # the promotion and the removal, found by the alias's name
    assert all("production" in row for row in rows)

"""Tests of the datasets REST API (/api/v1/datasets/), its auth and its OpenAPI documents."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rest_framework.test import APIClient

from classifier.models import Dataset, Visibility
from tests.factories import (
    PASSWORD,
    TINY_CLASS_COUNTS,
    TINY_CLASS_NAMES,
    DatasetFactory,
    ModelVersionFactory,
    UserFactory,
    medmnist_arrays,
    npz_bytes,
)
from training.models import TrainingJob

pytestmark = pytest.mark.django_db

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stored_files(media_root: Path) -> list[Path]:
    return [path for path in Path(media_root).rglob("*") if path.is_file()]


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(client: APIClient, payload: bytes, filename: str = "tiny.npz", **fields):
    return client.post(
        "/api/v1/datasets/",
        {"file": SimpleUploadedFile(filename, payload), **fields},
        format="multipart",
    )


def listed_ids(client: APIClient) -> set[int]:
    response = client.get("/api/v1/datasets/")
    assert response.status_code == 200
    return {row["id"] for row in response.json()["results"]}


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def bob():
    return UserFactory(username="bob")


# --- authentication ------------------------------------------------------------------------------


def test_it_denies_anonymous_requests():
    DatasetFactory(builtin=True)

    response = APIClient().get("/api/v1/datasets/")

    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Token"
    assert "results" not in response.json()


def test_it_rejects_an_unknown_token():
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")

    response = client.get("/api/v1/datasets/")

    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_it_issues_a_token_that_authenticates_requests(alice):
    own = DatasetFactory(owner=alice)
    client = APIClient()

    response = client.post("/api/v1/auth/token/", {"username": "alice", "password": PASSWORD},
                           format="json")
    assert response.status_code == 200
    token = response.json()["token"]
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")

    assert listed_ids(client) == {own.pk}


def test_it_issues_no_token_for_a_wrong_password(alice):
    response = APIClient().post("/api/v1/auth/token/",
                                {"username": "alice", "password": "guess"}, format="json")

    assert response.status_code == 400
    assert "token" not in response.json()


# --- upload --------------------------------------------------------------------------------------


def test_a_user_uploads_an_npz_and_gets_the_new_dataset(alice, media_root):
    response = upload(client_for(alice), npz_bytes(), "lesions.npz", name="Skin lesions",
                      class_names="adenoma, carcinoma, normal")

    assert response.status_code == 201
    body = response.json()
    dataset = Dataset.objects.get()
    assert body["id"] == dataset.pk
    assert body["name"] == "Skin lesions"
    assert body["owner"] == "alice"
    assert body["visibility"] == "private"
    assert body["is_builtin"] is False
    assert body["class_names"] == TINY_CLASS_NAMES
    assert body["num_classes"] == 3
    assert body["channels"] == 3
    assert body["split_counts"] == {"train": 30, "val": 9, "test": 12}
    assert body["class_counts"] == TINY_CLASS_COUNTS
    assert body["total_images"] == 51
    assert body["detail_url"] == f"/datasets/{dataset.pk}/"
    assert len(stored_files(media_root)) == 1


def test_it_accepts_class_names_as_a_json_list(alice):
    response = upload(client_for(alice), npz_bytes(), class_names='["x", "y", "z"]')

    assert response.status_code == 201
    assert response.json()["class_names"] == ["x", "y", "z"]


def test_it_rejects_a_bad_npz_naming_the_problem_and_stores_nothing(alice, media_root):
    arrays = medmnist_arrays()
    del arrays["val_labels"]

    response = upload(client_for(alice), npz_bytes(arrays), "broken.npz")

    assert response.status_code == 400
    assert "missing key 'val_labels'" in response.json()["file"][0]
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_rejects_a_text_file(alice, media_root):
    response = upload(client_for(alice), b"label,path\n0,a.png\n", "labels.txt")

    assert response.status_code == 400
    assert "unsupported file type" in response.json()["file"][0]
    assert stored_files(media_root) == []


def test_it_rejects_an_empty_file(alice):
    response = upload(client_for(alice), b"", "empty.npz")

    assert response.status_code == 400
    assert "empty" in response.json()["file"][0]


def test_it_rejects_an_upload_over_the_configured_size_limit(alice, settings, media_root):
    payload = npz_bytes()
    settings.DATASET_UPLOAD_MAX_BYTES = len(payload) - 1

    response = upload(client_for(alice), payload)

    assert response.status_code == 413
    assert response.json() == {"file": [
        f"the file 'tiny.npz' is larger than the limit of {len(payload) - 1} bytes; nothing was "
        "stored"]}
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_an_upload_over_the_limit_is_stopped_before_it_reaches_the_disk(
        alice, settings, media_root, spooled_uploads):
    temp_dir, spooled = spooled_uploads
    settings.DATASET_UPLOAD_MAX_BYTES = 256 * 1024

    response = upload(client_for(alice), b"\0" * (4 * 1024 * 1024), "huge.npz")

    assert response.status_code == 413
    assert "larger than the limit of 262144 bytes" in response.json()["file"][0]
    assert 0 < sum(spooled) <= settings.DATASET_UPLOAD_MAX_BYTES
    assert list(temp_dir.iterdir()) == []
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_an_upload_at_the_limit_is_accepted(alice, settings):
    payload = npz_bytes()
    settings.DATASET_UPLOAD_MAX_BYTES = len(payload)

    assert upload(client_for(alice), payload).status_code == 201


def test_it_rejects_more_class_names_than_the_labels_use(alice, media_root):
    response = upload(client_for(alice), npz_bytes(), class_names="a,b,c,d")

    assert response.status_code == 400
    assert "4 class names were given but the training labels have no image of d" in str(
        response.json())
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_rejects_duplicate_class_names(alice):
    response = upload(client_for(alice), npz_bytes(), class_names="a,a,b")

    assert response.status_code == 400
    assert "unique" in response.json()["class_names"][0]
    assert not Dataset.objects.exists()


def test_it_rejects_a_class_name_longer_than_a_prediction_can_store(alice, media_root):
    response = upload(client_for(alice), npz_bytes(), class_names=f"a,{'b' * 256},c")

    assert response.status_code == 400
    assert "at most 255 characters" in response.json()["class_names"][0]
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_it_rejects_an_image_size_for_an_npz_instead_of_ignoring_it(alice, media_root):
    response = upload(client_for(alice), npz_bytes(), image_size=64)

    assert response.status_code == 400
    assert "image_size resizes the images of a .zip" in response.json()["file"][0]
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_a_user_cannot_publish_a_dataset_to_everyone(alice, media_root):
    response = upload(client_for(alice), npz_bytes(), visibility="public")

    assert response.status_code == 400
    assert "only staff" in response.json()["visibility"][0]
    assert not Dataset.objects.exists()
    assert stored_files(media_root) == []


def test_staff_publish_a_dataset_every_user_sees(bob):
    staff = UserFactory(staff=True)

    response = upload(client_for(staff), npz_bytes(), visibility="public")

    assert response.status_code == 201
    assert response.json()["visibility"] == "public"
    assert response.json()["id"] in listed_ids(client_for(bob))


# --- who sees what -------------------------------------------------------------------------------


def test_other_users_private_datasets_are_invisible(alice, bob):
    private = DatasetFactory(owner=alice)
    bobs_client = client_for(bob)

    assert private.pk not in listed_ids(bobs_client)
    assert bobs_client.get(f"/api/v1/datasets/{private.pk}/").status_code == 404
    assert bobs_client.get(f"/api/v1/datasets/{private.pk}/samples/").status_code == 404
    assert bobs_client.get(f"/api/v1/datasets/{private.pk}/images/train/0/").status_code == 404
    assert bobs_client.delete(f"/api/v1/datasets/{private.pk}/").status_code == 404
    assert Dataset.objects.filter(pk=private.pk).exists()


def test_every_user_sees_the_builtin_datasets(alice, bob):
    builtin = DatasetFactory(builtin=True)
    own = DatasetFactory(owner=alice)

    assert listed_ids(client_for(alice)) == {builtin.pk, own.pk}
    assert listed_ids(client_for(bob)) == {builtin.pk}
    body = client_for(bob).get(f"/api/v1/datasets/{builtin.pk}/").json()
    assert body["is_builtin"] is True
    assert body["owner"] is None


def test_staff_see_every_dataset(alice, bob):
    datasets = {DatasetFactory(owner=alice).pk, DatasetFactory(owner=bob).pk,
                DatasetFactory(builtin=True).pk}

    assert listed_ids(client_for(UserFactory(staff=True))) == datasets


def test_a_user_cannot_delete_a_public_dataset_of_someone_else(alice, bob):
    public = DatasetFactory(owner=alice, visibility=Visibility.PUBLIC)
    builtin = DatasetFactory(builtin=True)

    assert client_for(bob).delete(f"/api/v1/datasets/{public.pk}/").status_code == 403
    assert client_for(bob).delete(f"/api/v1/datasets/{builtin.pk}/").status_code == 403
    assert Dataset.objects.count() == 2


def test_a_user_deletes_their_own_dataset_and_its_file(alice, media_root,
                                                       django_capture_on_commit_callbacks):
    dataset = DatasetFactory(owner=alice)
    stored = Path(media_root, dataset.data_file.name)
    assert stored.is_file()

    with django_capture_on_commit_callbacks(execute=True):
        response = client_for(alice).delete(f"/api/v1/datasets/{dataset.pk}/")

    assert response.status_code == 204
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert not stored.exists()


def test_it_keeps_a_dataset_that_trained_models(alice, media_root):
    model = ModelVersionFactory(dataset=DatasetFactory(owner=alice))

    response = client_for(alice).delete(f"/api/v1/datasets/{model.dataset_id}/")

    assert response.status_code == 409
    assert "trained models" in response.json()["detail"]
    assert Dataset.objects.filter(pk=model.dataset_id).exists()
    assert Path(media_root, model.dataset.data_file.name).is_file()


def test_it_keeps_a_dataset_that_training_jobs_use_and_says_so(alice, media_root):
    dataset = DatasetFactory(owner=alice)
    TrainingJob.objects.create(owner=alice, dataset=dataset, config={}, total_epochs=2)

    response = client_for(alice).delete(f"/api/v1/datasets/{dataset.pk}/")

    assert response.status_code == 409
    assert response.json()["detail"] == "this dataset is still used by training jobs (1)"
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert Path(media_root, dataset.data_file.name).is_file()


# --- samples and images --------------------------------------------------------------------------


def test_samples_list_each_class_with_indices_of_its_images(alice):
    dataset = DatasetFactory(owner=alice, seed=7)
    labels = medmnist_arrays(TINY_CLASS_COUNTS, seed=7)["val_labels"].reshape(-1)

    response = client_for(alice).get(f"/api/v1/datasets/{dataset.pk}/samples/",
                                     {"split": "val", "per_class": 3})

    assert response.status_code == 200
    body = response.json()
    assert body["split"] == "val"
    assert [(row["index"], row["name"]) for row in body["classes"]] == list(
        enumerate(TINY_CLASS_NAMES))
    for row, available in zip(body["classes"], TINY_CLASS_COUNTS["val"], strict=True):
        assert len(row["samples"]) == min(3, available)
        assert all(labels[i] == row["index"] for i in row["samples"])
        assert row["image_urls"] == [
            f"/api/v1/datasets/{dataset.pk}/images/val/{i}/" for i in row["samples"]
        ]


def test_samples_reject_an_unknown_split_and_a_bad_count(alice):
    dataset = DatasetFactory(owner=alice)
    client = client_for(alice)

    unknown = client.get(f"/api/v1/datasets/{dataset.pk}/samples/", {"split": "holdout"})
    bad_count = client.get(f"/api/v1/datasets/{dataset.pk}/samples/", {"per_class": "many"})

    assert unknown.status_code == 400
    assert "unknown split 'holdout'" in unknown.json()["split"][0]
    assert bad_count.status_code == 400
    assert "per_class" in bad_count.json()


@pytest.mark.parametrize("channels", [3, None], ids=["rgb", "grayscale"])
def test_an_image_comes_back_as_the_png_of_the_stored_pixels(alice, channels):
    dataset = DatasetFactory(owner=alice, channels=channels, seed=3)
    expected = medmnist_arrays(TINY_CLASS_COUNTS, channels=channels, seed=3)["test_images"][5]

    response = client_for(alice).get(f"/api/v1/datasets/{dataset.pk}/images/test/5/")

    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert response.content.startswith(PNG_MAGIC)
    decoded = np.asarray(Image.open(io.BytesIO(response.content)))
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)


def test_an_image_index_past_the_end_is_not_found(alice):
    dataset = DatasetFactory(owner=alice)
    client = client_for(alice)
    last = sum(TINY_CLASS_COUNTS["train"]) - 1

    assert client.get(f"/api/v1/datasets/{dataset.pk}/images/train/{last}/").status_code == 200
    assert client.get(f"/api/v1/datasets/{dataset.pk}/images/train/{last + 1}/").status_code == 404
    assert client.get(f"/api/v1/datasets/{dataset.pk}/images/holdout/0/").status_code == 404


@pytest.mark.parametrize("index", ["9" * 5000, "\u0661"], ids=["too-many-digits", "arabic-one"])
def test_an_image_index_that_is_not_a_plain_number_is_not_found(alice, index):
    # Both were server errors: int() refuses 5000 digits, and an Arabic-Indic digit ended up
    # in the Content-Disposition header, which must be Latin-1.
    dataset = DatasetFactory(owner=alice)
    client = client_for(alice)
    client.raise_request_exception = False

    response = client.get(f"/api/v1/datasets/{dataset.pk}/images/train/{index}/")

    assert response.status_code == 404


# --- pagination ----------------------------------------------------------------------------------


@pytest.mark.parametrize("params, field", [
    ({"limit": "abc"}, "limit"), ({"limit": "0"}, "limit"), ({"limit": "-3"}, "limit"),
    ({"limit": "1.5"}, "limit"), ({"offset": "-1"}, "offset"), ({"offset": "x"}, "offset"),
    ({"limit": "\u0664"}, "limit"),  # an Arabic-Indic digit four
])
def test_a_bad_limit_or_offset_is_refused_naming_it(alice, params, field):
    response = client_for(alice).get("/api/v1/datasets/", params)
    # Not the first page, as if the parameter had not been given.
    assert response.status_code == 400
    assert list(response.json()) == [field]


def test_a_page_holds_at_most_500_rows_and_links_to_the_next(alice, settings):
    from classifier.api.pagination import CheckedLimitOffsetPagination

    DatasetFactory(owner=alice)
    DatasetFactory(owner=alice)
    client = client_for(alice)
    page = client.get("/api/v1/datasets/", {"limit": "1", "offset": "1"}).json()
    assert page["count"] == 2 and len(page["results"]) == 1 and page["next"] is None

    CheckedLimitOffsetPagination.max_limit, saved = 1, CheckedLimitOffsetPagination.max_limit
    try:
        page = client.get("/api/v1/datasets/", {"limit": "100000"}).json()
    finally:
        CheckedLimitOffsetPagination.max_limit = saved
    assert len(page["results"]) == 1 and "limit=1" in page["next"]
    assert saved == 500


# --- OpenAPI -------------------------------------------------------------------------------------


def test_the_openapi_schema_describes_the_datasets_endpoints(alice):
    response = client_for(alice).get("/api/v1/schema/")

    assert response.status_code == 200
    schema = response.content.decode()
    assert "/api/v1/datasets/" in schema
    assert "/api/v1/datasets/{id}/samples/" in schema
    assert "multipart/form-data" in schema


def _script_sources(html: str) -> list[str]:
    return re.findall(r"<script[^>]*\bsrc=\"([^\"]*)\"", html)


def test_the_api_docs_load_their_scripts_from_this_site_only(client, alice):
    client.force_login(alice)

    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    sources = _script_sources(html)
    assert any("swagger-ui-bundle" in src for src in sources)
    # Same site only: paths on this host, never another origin.
    assert all(src.startswith("/") and not src.startswith("//") for src in sources), sources
    assert "cdn" not in html.lower()
    for tag in re.findall(r"<(?:link|script)\b[^>]*>", html):
        assert "http://" not in tag and "https://" not in tag, tag


def test_the_api_docs_need_no_inline_script(client, alice):
    client.force_login(alice)

    html = client.get("/api/v1/docs/").content.decode()

    assert "script-src 'self'" in client.get("/api/v1/docs/")["Content-Security-Policy"]
    inline = [body for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
              if "src=" not in attrs and body.strip()]
    assert inline == []

"""Tests of the catalog's HTML pages and its admin console."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from classifier import services
from classifier.models import Dataset, Visibility
from tests.factories import (
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


class _TableReader(HTMLParser):
    """Text of every cell of one table, row by row, split into head, body and foot."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id = table_id
        self.depth = 0  # > 0 while inside the table
        self.section = "tbody"
        self.rows: dict[str, list[list[str]]] = {"thead": [], "tbody": [], "tfoot": []}
        self.cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "table" and (self.depth or dict(attrs).get("id") == self.table_id):
            self.depth += 1
        elif not self.depth:
            return
        elif tag in self.rows:
            self.section = tag
        elif tag == "tr":
            self.rows[self.section].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag):
        if not self.depth:
            return
        if tag == "table":
            self.depth -= 1
        elif tag in ("td", "th") and self.cell is not None:
            self.rows[self.section][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def read_table(html: str, table_id: str) -> dict[str, list[list[str]]]:
    reader = _TableReader(table_id)
    reader.feed(html)
    assert reader.rows["thead"], f"no table #{table_id} on the page"
    return reader.rows


class _ImageReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs).get("src", ""))


class _TermReader(HTMLParser):
    """Terms and their descriptions of one ``<dl>``, as text."""

    def __init__(self, list_id: str):
        super().__init__()
        self.list_id = list_id
        self.inside = False
        self.terms: dict[str, str] = {}
        self.tag = ""
        self.term = ""

    def handle_starttag(self, tag, attrs):
        if tag == "dl" and dict(attrs).get("id") == self.list_id:
            self.inside = True
        elif self.inside and tag in ("dt", "dd"):
            self.tag = tag
            if tag == "dt":
                self.term = ""

    def handle_endtag(self, tag):
        if tag == "dl":
            self.inside = False
        elif tag in ("dt", "dd"):
            if tag == "dd":
                self.terms[self.term] = " ".join(self.terms.get(self.term, "").split())
            self.tag = ""

    def handle_data(self, data):
        if self.tag == "dt":
            self.term += data.strip()
        elif self.tag == "dd":
            self.terms[self.term] = self.terms.get(self.term, "") + data


def read_terms(html: str, list_id: str) -> dict[str, str]:
    reader = _TermReader(list_id)
    reader.feed(html)
    assert reader.terms, f"no list #{list_id} on the page"
    return reader.terms


def image_sources(html: str) -> list[str]:
    reader = _ImageReader()
    reader.feed(html)
    return reader.sources


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def alice_client(client, alice):
    client.force_login(alice)
    return client


# --- login ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/datasets/", "/datasets/import/", "/datasets/1/"])
def test_pages_send_anonymous_visitors_to_the_login_page(client, path):
    response = client.get(path)

    assert response.status_code == 302
    assert response["Location"].startswith(f"/login/?next={path}")


def test_the_login_page_logs_a_user_in(client, alice):
    page = client.get("/login/")
    assert page.status_code == 200
    assert 'name="username"' in page.content.decode()

    response = client.post("/login/", {"username": "alice", "password": "pw-12345!"})

    assert response.status_code == 302
    assert response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_the_login_page_refuses_a_wrong_password(client, alice):
    response = client.post("/login/", {"username": "alice", "password": "nope"})

    assert response.status_code == 200
    assert "didn't match" in response.content.decode()
    assert client.get("/datasets/").status_code == 302


# --- pages ---------------------------------------------------------------------------------------


def test_the_home_page_greets_the_user_and_lists_their_datasets(alice_client, alice):
    DatasetFactory(owner=alice, name="Alice's scans")

    response = alice_client.get("/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "Welcome, alice" in html
    assert "Alice&#x27;s scans" in html


def test_the_dataset_list_shows_builtins_and_own_datasets_only(alice_client, alice):
    DatasetFactory(builtin=True, name="BuiltinMNIST")
    DatasetFactory(owner=alice, name="Alice scans")
    DatasetFactory(owner=UserFactory(), name="Somebody else's scans")

    response = alice_client.get("/datasets/")

    assert response.status_code == 200
    rows = read_table(response.content.decode(), "dataset-table")["tbody"]
    # Built-ins first, then by name.
    assert [row[0] for row in rows] == ["BuiltinMNIST built-in", "Alice scans"]
    assert rows[0][-1] == "platform"
    assert rows[1][-1] == "alice"
    assert rows[1][4:6] == ["28\u00d728\u00d73", "30 / 9 / 12"]  # 28 by 28 pixels, 3 channels


def test_the_dataset_page_shows_the_class_balance_per_split(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    response = alice_client.get(f"/datasets/{dataset.pk}/")

    assert response.status_code == 200
    table = read_table(response.content.decode(), "class-balance")
    header = table["thead"][0]
    columns = {split: header.index(split) for split in ("train", "val", "test")}
    assert len(table["tbody"]) == 3
    for index, (row, name) in enumerate(zip(table["tbody"], TINY_CLASS_NAMES, strict=True)):
        assert row[:2] == [str(index), name]
        for split, column in columns.items():
            assert row[column] == str(TINY_CLASS_COUNTS[split][index]), (name, split)
        assert row[header.index("total")] == str(
            sum(TINY_CLASS_COUNTS[split][index] for split in columns))
    footer = table["tfoot"][0]
    assert [footer[columns[split]] for split in ("train", "val", "test")] == ["30", "9", "12"]
    assert footer[header.index("total")] == "51"


def test_the_class_balance_lists_splits_as_train_val_test(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    response = alice_client.get(f"/datasets/{dataset.pk}/")

    header = read_table(response.content.decode(), "class-balance")["thead"][0]
    assert header[2:5] == ["train", "val", "test"]


def test_the_dataset_page_shows_a_grid_of_sample_images(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    train = image_sources(alice_client.get(f"/datasets/{dataset.pk}/").content.decode())
    val = image_sources(alice_client.get(f"/datasets/{dataset.pk}/?split=val").content.decode())

    prefix = f"/api/v1/datasets/{dataset.pk}/images/"
    # Up to 8 per class: every class has at least 8 training images.
    assert len(train) == 24
    assert all(src.startswith(prefix + "train/") for src in train)
    assert len(val) == sum(TINY_CLASS_COUNTS["val"])
    assert all(src.startswith(prefix + "val/") for src in val)
    # The page's images are served to its viewer.
    image = alice_client.get(train[0])
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"


def test_the_dataset_page_falls_back_to_train_for_an_unknown_split(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    response = alice_client.get(f"/datasets/{dataset.pk}/?split=holdout")

    assert response.status_code == 200
    assert all("/images/train/" in src for src in image_sources(response.content.decode()))


def test_the_dataset_page_says_where_an_upload_came_from_and_who_sees_it(alice_client, alice):
    dataset = DatasetFactory(owner=alice, filename="lesions.npz")

    html = alice_client.get(f"/datasets/{dataset.pk}/").content.decode()

    assert read_terms(html, "dataset-provenance") == {
        "Source": "Uploaded .npz · lesions.npz",
        "Licence": "not stated",
        "Visibility": "Private (owner and staff)",
        "Owner": "alice",
        "Source preprocessing": "not recorded",
    }


def test_the_dataset_page_shows_an_official_builtins_licence_and_preprocessing(
        alice_client, tmp_path, published_checksums):
    payload = npz_bytes(medmnist_arrays({"train": [6, 4], "val": [2, 2], "test": [3, 2]},
                                        channels=None))
    (tmp_path / "breastmnist.npz").write_bytes(payload)
    published_checksums("breastmnist.npz", payload)
    dataset, _ = services.builtin_dataset_import(flag="breastmnist", folder=tmp_path)

    html = alice_client.get(f"/datasets/{dataset.pk}/").content.decode()

    assert read_terms(html, "dataset-provenance") == {
        "Source": "MedMNIST (official) · breastmnist.npz",
        "Licence": "CC BY 4.0",
        "Visibility": "Public (every user)",
        "Owner": "platform (built-in)",
        "Source preprocessing": "channels: 1 · crop: none (full frame) · "
                                "modality: Breast ultrasound · resize: bilinear",
    }


def test_another_users_private_dataset_page_is_not_found(alice_client):
    private = DatasetFactory(owner=UserFactory())
    public = DatasetFactory(owner=UserFactory(), visibility=Visibility.PUBLIC)

    assert alice_client.get(f"/datasets/{private.pk}/").status_code == 404
    assert alice_client.get(f"/datasets/{public.pk}/").status_code == 200


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def test_the_owner_deletes_a_dataset_from_its_page(alice_client, alice, media_root,
                                                  django_capture_on_commit_callbacks):
    dataset = DatasetFactory(owner=alice, name="Ward scans")
    page = alice_client.get(f"/datasets/{dataset.pk}/")
    assert 'id="delete-dataset-form"' in page.content.decode()
    assert 'data-confirm="Delete the dataset Ward scans' in page.content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = alice_client.post(f"/datasets/{dataset.pk}/delete/", follow=True)

    assert response.redirect_chain == [("/datasets/", 302)]
    assert messages_of(response) == ["Deleted the dataset Ward scans and its file."]
    assert not Dataset.objects.filter(pk=dataset.pk).exists()
    assert not Path(media_root, dataset.data_file.name).exists()


def test_a_dataset_that_a_training_job_uses_is_kept_and_the_page_says_why(
        alice_client, alice, media_root):
    dataset = DatasetFactory(owner=alice, name="Ward scans")
    TrainingJob.objects.create(owner=alice, dataset=dataset, config={}, total_epochs=2)

    response = alice_client.post(f"/datasets/{dataset.pk}/delete/", follow=True)

    assert response.redirect_chain == [(f"/datasets/{dataset.pk}/", 302)]
    assert messages_of(response) == [
        "Ward scans was not deleted: this dataset is still used by training jobs (1)."]
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert Path(media_root, dataset.data_file.name).exists()


def test_only_the_owner_or_staff_delete_a_dataset_and_only_by_post(alice_client, alice):
    public = DatasetFactory(owner=UserFactory(), visibility=Visibility.PUBLIC)
    private = DatasetFactory(owner=UserFactory())
    builtin = DatasetFactory(builtin=True, visibility=Visibility.PUBLIC)
    own = DatasetFactory(owner=alice)

    assert 'id="delete-dataset-form"' not in alice_client.get(f"/datasets/{public.pk}/").content.decode()
    assert alice_client.post(f"/datasets/{public.pk}/delete/").status_code == 403
    assert alice_client.post(f"/datasets/{builtin.pk}/delete/").status_code == 403
    assert alice_client.post(f"/datasets/{private.pk}/delete/").status_code == 404
    assert alice_client.get(f"/datasets/{own.pk}/delete/").status_code == 405
    assert Dataset.objects.count() == 4

    staff = Client()
    staff.force_login(UserFactory(username="root", superuser=True))
    assert staff.post(f"/datasets/{public.pk}/delete/").status_code == 302
    assert not Dataset.objects.filter(pk=public.pk).exists()


def test_the_import_page_renders_the_upload_form(alice_client):
    response = alice_client.get("/datasets/import/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'id="import-form"' in html
    assert 'type="file" id="id_file" name="file" accept=".npz,.zip"' in html
    assert 'data-endpoint="/api/v1/datasets/"' in html
    assert "csrfmiddlewaretoken" in html
    assert "/static/js/dataset_import.js" in html
    # Only staff may publish, so only staff get the visibility choice.
    assert 'name="visibility"' not in html


def test_an_upload_from_the_import_page_over_the_limit_gets_the_reason(alice, settings,
                                                                      media_root):
    # As the page's script sends it: the session's cookie and CSRF token, multipart form data.
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get("/datasets/import/")
    token = page.cookies["csrftoken"].value
    payload = npz_bytes()
    settings.DATASET_UPLOAD_MAX_BYTES = len(payload) - 1

    response = client.post("/api/v1/datasets/", {
        "file": SimpleUploadedFile("scans.npz", payload)}, HTTP_X_CSRFTOKEN=token,
        HTTP_ACCEPT="application/json")

    assert response.status_code == 413
    assert response.json() == {"file": [
        f"the file 'scans.npz' is larger than the limit of {len(payload) - 1} bytes; nothing was "
        "stored"]}
    assert not Dataset.objects.exists()
    assert not [path for path in Path(media_root).rglob("*") if path.is_file()]


def test_the_import_page_offers_staff_the_visibility_choice(client):
    client.force_login(UserFactory(staff=True))

    html = client.get("/datasets/import/").content.decode()

    assert '<select id="id_visibility" name="visibility">' in html


def test_pages_carry_the_security_headers(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    for path in ["/", "/datasets/", f"/datasets/{dataset.pk}/", "/datasets/import/", "/login/"]:
        response = alice_client.get(path)
        assert response.status_code == 200, path
        assert "default-src 'self'" in response["Content-Security-Policy"], path
        assert "script-src 'self'" in response["Content-Security-Policy"], path
        assert response["X-Content-Type-Options"] == "nosniff", path
        assert response["X-Frame-Options"] == "DENY", path


# --- admin ---------------------------------------------------------------------------------------


@pytest.fixture
def staff_client(client):
    client.force_login(UserFactory(username="root", superuser=True))
    return client


def test_admin_lists_and_searches_datasets(staff_client):
    DatasetFactory(name="Chest scans")
    DatasetFactory(name="Skin lesions")

    everything = staff_client.get("/admin/classifier/dataset/")
    found = staff_client.get("/admin/classifier/dataset/", {"q": "lesions"})

    assert everything.status_code == 200
    assert "Chest scans" in everything.content.decode()
    assert "Skin lesions" in everything.content.decode()
    assert found.status_code == 200
    assert "Skin lesions" in found.content.decode()
    assert "Chest scans" not in found.content.decode()
    assert "/admin/classifier/dataset/import/" in everything.content.decode()


def test_admin_lists_and_searches_model_versions(staff_client):
    ModelVersionFactory(name="resnet-blood", architecture="resnet18")
    ModelVersionFactory(name="vgg-breast", architecture="vgg16")

    everything = staff_client.get("/admin/classifier/modelversion/")
    found = staff_client.get("/admin/classifier/modelversion/", {"q": "vgg16"})

    assert everything.status_code == 200
    assert "resnet-blood" in everything.content.decode()
    assert found.status_code == 200
    assert "vgg-breast" in found.content.decode()
    assert "resnet-blood" not in found.content.decode()


def test_admin_is_closed_to_users_who_are_not_staff(alice_client):
    response = alice_client.get("/admin/classifier/dataset/import/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_admin_imports_an_uploaded_npz(staff_client, media_root):
    response = staff_client.post("/admin/classifier/dataset/import/", {
        "file": SimpleUploadedFile("tiny.npz", npz_bytes()),
        "name": "Admin upload",
        "visibility": Visibility.PUBLIC,
    })

    dataset = Dataset.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/classifier/dataset/{dataset.pk}/change/"
    assert dataset.name == "Admin upload"
    assert dataset.owner.username == "root"
    assert dataset.visibility == Visibility.PUBLIC
    assert dataset.split_counts == {"train": 30, "val": 9, "test": 12}
    assert Path(media_root, dataset.data_file.name).is_file()


def test_admin_import_shows_why_a_file_was_rejected(staff_client, media_root):
    form = staff_client.get("/admin/classifier/dataset/import/")
    assert form.status_code == 200
    assert 'type="file"' in form.content.decode()

    response = staff_client.post("/admin/classifier/dataset/import/", {
        "file": SimpleUploadedFile("broken.npz", b"not an npz"),
        "visibility": Visibility.PRIVATE,
    })

    assert response.status_code == 200
    assert "broken.npz: not a valid .npz file" in response.content.decode()
    assert not Dataset.objects.exists()
    assert not any(path.is_file() for path in Path(media_root).rglob("*"))


def test_admin_imports_the_configured_medmnist_datasets(staff_client, settings):
    if not Path(settings.MEDMNIST_DIR, "breastmnist.npz").is_file():
        pytest.skip("breastmnist.npz is not in MEDMNIST_DIR")
    settings.MEDMNIST_IMPORT = ["breastmnist"]

    response = staff_client.post("/admin/classifier/dataset/import/",
                                 {"import_medmnist": "1"}, follow=True)

    assert response.status_code == 200
    assert "Imported BreastMNIST" in response.content.decode()
    assert Dataset.objects.get().is_builtin


def test_admin_imports_medmnist_from_the_folder_and_downloads_only_when_asked(
        staff_client, settings, tmp_path, monkeypatch):
    settings.MEDMNIST_DIR = str(tmp_path)  # empty: breastmnist.npz is not there
    settings.MEDMNIST_IMPORT = ["breastmnist"]
    downloads = []

    def download(flag, size, target, timeout, progress=None):
        downloads.append(flag)
        raise services.DatasetImportError(f"could not download {flag}")

    monkeypatch.setattr(services, "_download_medmnist", download)

    from_folder = staff_client.post("/admin/classifier/dataset/import/",
                                    {"import_medmnist": "1"}, follow=True)

    assert downloads == []
    assert [str(m) for m in from_folder.context["messages"]] == [
        f"breastmnist: breastmnist.npz not found in {tmp_path}"]

    staff_client.post("/admin/classifier/dataset/import/",
                      {"import_medmnist": "1", "download": "on"}, follow=True)

    assert downloads == ["breastmnist"]
    assert not Dataset.objects.exists()


def test_admin_keeps_a_dataset_that_training_jobs_use(staff_client, media_root):
    dataset = DatasetFactory(name="Trained on")
    TrainingJob.objects.create(owner=dataset.owner, dataset=dataset, config={}, total_epochs=2)

    response = staff_client.post(f"/admin/classifier/dataset/{dataset.pk}/delete/",
                                 {"post": "yes"})

    assert response.status_code == 200
    assert "would require deleting the following protected related objects" in (
        response.content.decode())
    assert Dataset.objects.filter(pk=dataset.pk).exists()
    assert Path(media_root, dataset.data_file.name).is_file()


# --- navigation, empty states and units ----------------------------------------------------------


def current_sections(html: str) -> list[str]:
    """Texts of the main navigation's links marked as the current page."""
    return re.findall(r'<a href="[^"]*" class="active" aria-current="page">([^<]+)</a>', html)


def test_dataset_pages_mark_datasets_as_the_current_section(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    for path in ("/datasets/", f"/datasets/{dataset.pk}/", "/datasets/import/"):
        assert current_sections(alice_client.get(path).content.decode()) == ["Datasets"], path
    assert current_sections(alice_client.get("/").content.decode()) == []


def test_the_class_balance_gives_each_class_share_of_train_in_percent(alice_client, alice):
    dataset = DatasetFactory(owner=alice)

    response = alice_client.get(f"/datasets/{dataset.pk}/")

    table = read_table(response.content.decode(), "class-balance")
    assert [row[-1] for row in table["tbody"]] == ["40%", "33%", "27%"]  # of 12, 10 and 8 of 30


def test_empty_pages_link_to_the_next_step(alice_client):
    home = alice_client.get("/").content.decode()
    assert re.search(r'No training jobs yet — <a href="/jobs/new/">launch one</a>', home)
    assert re.search(r'No trained models yet — <a href="/jobs/new/">train one</a>', home)
    datasets = alice_client.get("/datasets/").content.decode()
    assert re.search(r'No datasets yet — <a href="/datasets/import/">import one</a>', datasets)
    models = alice_client.get("/models/").content.decode()
    assert re.search(r'No models yet — <a href="/jobs/new/">train one</a>', models)
    classify = alice_client.get("/classify/").content.decode()
    assert re.search(r'No trained model is available to you yet — <a href="/jobs/new/">train one</a>',
                     classify)
    predictions = alice_client.get("/predictions/").content.decode()
    assert re.search(r'No predictions\. <a href="/classify/">Classify an image</a>', predictions)


def test_the_home_page_links_each_model_to_its_page(alice_client, alice):
    model = ModelVersionFactory(dataset=DatasetFactory(owner=alice), name="alice-cnn",
                                metrics={"accuracy": 0.83951})

    html = alice_client.get("/").content.decode()

    rows = read_table(html, "home-models")["tbody"]
    assert rows == [["alice-cnn v1", model.dataset.name, "0.8395"]]
    assert f'<a href="/models/{model.pk}/">alice-cnn v1</a>' in html

"""Comparing models: the table and its CSV, the report's reference rows, McNemar tests, the pages."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from rest_framework.test import APIClient

from classifier import selectors, services_registry
from classifier.models import Dataset, ModelVersion, Visibility
from medml.stats import mcnemar
from tests.classifier.test_registry import register_model, saved_model_file
from tests.factories import DatasetFactory, UserFactory, medmnist_arrays, npz_bytes

pytestmark = pytest.mark.django_db

URL = "/api/v1/models/compare/"
REPORT_COLUMNS = ["accuracy", "precision_weighted", "recall_weighted", "f1_weighted"]


@pytest.fixture(autouse=True)
def fast_evaluation(settings, tmp_path):
    settings.MODEL_EVALUATION_BOOTSTRAP = 100
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tmp_path_factory.mktemp("compare-models")


@pytest.fixture
def owner():
    return UserFactory(username="cora")


@pytest.fixture
def blood(owner, published_checksums):
    # Tiny arrays whose checksum the test publishes as BloodMNIST's, so the platform knows them
    # as the official file (a name alone is not enough).
    published_checksums("bloodmnist.npz", npz_bytes(medmnist_arrays()))
    dataset = DatasetFactory(owner=owner, name="BloodMNIST", filename="bloodmnist.npz")
    assert dataset.source == Dataset.Source.MEDMNIST
    return dataset


@pytest.fixture
def evaluated(blood, owner, model_files):
    """Two models of the dataset, evaluated on its test split, with a short training history."""
    models = []
    for seed, name in ((0, "small"), (1, "other")):
        history = [{"epoch": e, "loss": 1.2 - 0.1 * e - seed / 10, "val_loss": 1.1 - 0.05 * e,
                    "accuracy": 0.3 + 0.1 * e, "val_accuracy": 0.3 + 0.05 * e + seed / 20}
                   for e in (1, 2, 3)]
        model = register_model(blood, owner, saved_model_file(model_files, seed=seed), name=name,
                               history=history)
        services_registry.model_version_evaluate(model_version=model)
        model.refresh_from_db()
        models.append(model)
    return models


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def compare(client, dataset, models, **params):
    return client.get(URL, {"dataset": dataset.pk, "models": ",".join(str(m.pk) for m in models),
                            **params})


def test_the_comparison_has_the_reports_columns_and_more_for_each_model(evaluated, blood, owner):
    response = compare(api(owner), blood, evaluated)
    assert response.status_code == 200
    data = response.json()
    keys = [column["key"] for column in data["columns"]]
    assert keys[:6] == ["model", "architecture", *REPORT_COLUMNS]
    assert {"roc_auc", "balanced_accuracy", "ece", "num_params", "train_seconds"} <= set(keys)

    rows = {row["id"]: row for row in data["rows"]}
    for model in evaluated:
        row = rows[model.pk]
        assert row["model"] == str(model)
        assert row["accuracy"] == model.metrics["accuracy"]
        assert row["precision_weighted"] == model.metrics["weighted_avg"]["precision"]
        assert row["recall_weighted"] == model.metrics["weighted_avg"]["recall"]
        assert row["f1_weighted"] == model.metrics["weighted_avg"]["f1"]
        assert row["ece"] == model.metrics["calibration"]["ece"]
        assert row["num_params"] == 1234 and row["train_seconds"] == 5.5
    assert [c["rows"][0]["cells"][0]["count"] for c in data["confusion_matrices"]] == [
        m.metrics["confusion_matrix"][0][0] for m in evaluated]
    assert [h["history"] for h in data["histories"]] == [m.history for m in evaluated]


def test_the_reports_published_figures_are_reference_rows_for_bloodmnist(evaluated, blood, owner):
    references = compare(api(owner), blood, evaluated).json()["references"]
    assert [(r["model"], [r[k] for k in REPORT_COLUMNS]) for r in references] == [
        ("Report: Novel DNN, 95% (Table 2)", [0.95, 0.95, 0.95, 0.94]),
        ("Report: Novel DNN, 85% (Table 2)", [0.85, 0.86, 0.85, 0.85]),
        ("Report: ResNet50 (Table 1)", [0.15, 0.11, 0.15, 0.11]),
    ]
    assert all(r["reference"] and r["id"] is None for r in references)


def test_breastmnist_gets_its_own_reference_rows_and_other_datasets_none(owner, model_files,
                                                                        published_checksums):
    counts = {"train": [4, 4], "val": [2, 2], "test": [3, 3]}
    published_checksums("breastmnist.npz", npz_bytes(medmnist_arrays(counts)))
    breast = DatasetFactory(owner=owner, filename="breastmnist.npz", class_counts=counts,
                            class_names=["malignant", "normal, benign"])
    model = register_model(breast, owner, saved_model_file(model_files, num_classes=2, seed=3),
                           name="breast")
    references = compare(api(owner), breast, [model]).json()["references"]
    assert [[r[k] for k in REPORT_COLUMNS] for r in references] == [
        [0.83, 0.82, 0.83, 0.82], [0.77, 0.79, 0.77, 0.71], [0.71, 0.67, 0.71, 0.68]]

    own = DatasetFactory(owner=owner, filename="lesions.npz")
    plain = register_model(own, owner, saved_model_file(model_files, seed=0), name="plain")
    assert compare(api(owner), own, [plain]).json()["references"] == []


def test_a_file_only_named_like_bloodmnist_gets_no_reference_rows(owner, model_files):
    spoof = DatasetFactory(owner=owner, name="BloodMNIST", filename="bloodmnist.npz")
    model = register_model(spoof, owner, saved_model_file(model_files, seed=0), name="spoof")

    assert spoof.source == Dataset.Source.NPZ
    assert compare(api(owner), spoof, [model]).json()["references"] == []


def test_mcnemar_compares_two_models_on_their_stored_test_predictions(evaluated, blood, owner):
    data = compare(api(owner), blood, evaluated).json()["mcnemar"]
    labels = selectors.dataset_arrays(dataset=blood).labels("test")
    predictions = [m.evaluations.get(split="test").predicted for m in evaluated]
    expected = mcnemar(labels, predictions[0], predictions[1])

    assert data["ids"] == [m.pk for m in evaluated]
    assert data["matrix"][0][0] is None and data["matrix"][1][1] is None
    one_pair = {**expected, "p_holm": expected["p_value"]}  # one test: nothing to adjust
    assert data["matrix"][0][1] == one_pair
    assert data["matrix"][1][0] == {**one_pair, "b": expected["c"], "c": expected["b"]}
    assert data["missing"] == []


def test_a_model_without_stored_predictions_is_named_in_the_mcnemar_matrix(evaluated, blood, owner,
                                                                          model_files):
    fresh = register_model(blood, owner, saved_model_file(model_files, seed=2), name="fresh")
    data = compare(api(owner), blood, [*evaluated, fresh]).json()["mcnemar"]
    assert data["missing"] == [str(fresh)]
    assert data["matrix"][0][2] is None and data["matrix"][0][1] is not None


def test_the_comparison_downloads_as_csv_from_the_api_and_the_page(evaluated, blood, owner):
    response = compare(api(owner), blood, evaluated, format="csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert 'filename="compare-' in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0][:7] == ["source", "model", "architecture", *REPORT_COLUMNS]
    assert [row[0] for row in rows[1:]] == ["measured", "measured", "report", "report", "report"]
    assert rows[1][1] == str(evaluated[0])
    assert float(rows[1][3]) == evaluated[0].metrics["accuracy"]
    assert rows[3][1:4] == ["Report: Novel DNN, 95% (Table 2)", "blood_cnn_95", "0.95"]

    client = Client()
    client.force_login(owner)
    page_csv = client.get("/models/compare/", {"dataset": blood.pk,
                                               "models": f"{evaluated[0].pk},{evaluated[1].pk}",
                                               "format": "csv"})
    assert page_csv.content == response.content


def test_comparing_a_model_the_user_cannot_see_is_not_found(evaluated, blood, owner, model_files):
    stranger = UserFactory(username="sven")
    ModelVersion.objects.filter(pk=evaluated[0].pk).update(visibility=Visibility.PUBLIC)
    # The dataset itself is private to its owner.
    assert compare(api(stranger), blood, evaluated[:1]).status_code == 404

    public = DatasetFactory(builtin=True, name="Public blood")
    hidden = register_model(public, owner, saved_model_file(model_files, seed=0), name="hidden")
    response = api(stranger).get(URL, {"dataset": public.pk, "models": str(hidden.pk)})
    assert response.status_code == 404


def test_models_of_another_dataset_or_no_models_are_refused(evaluated, blood, owner, model_files):
    other = DatasetFactory(owner=owner)
    stray = register_model(other, owner, saved_model_file(model_files, seed=0), name="stray")
    response = compare(api(owner), blood, [evaluated[0], stray])
    assert response.status_code == 400
    assert "was not trained on BloodMNIST" in response.json()["models"][0]
    assert api(owner).get(URL, {"dataset": blood.pk, "models": ""}).status_code == 400
    assert api(owner).get(URL, {"models": str(evaluated[0].pk)}).status_code == 400
    assert api(owner).get(URL, {"dataset": blood.pk, "models": "1,x"}).status_code == 400


def test_the_compare_page_shows_the_table_confusion_matrices_curves_and_tests(evaluated, blood,
                                                                             owner):
    client = Client()
    client.force_login(owner)
    page = client.get("/models/compare/", {"models": [evaluated[0].pk, evaluated[1].pk]})
    assert page.status_code == 200  # the dataset is taken from the models when not given
    html = page.content.decode()
    assert html.count('<tr class="measured"') == 2 and html.count('<tr class="reference"') == 3
    assert html.count('<table class="confusion">') == 2
    assert 'id="mcnemar-table"' in html and 'id="compare-curves"' in html
    assert f"{evaluated[0].metrics['accuracy']:.4f}" in html
    assert '<script src="/static/js/compare.js">' in html
    assert "<script>" not in html  # nothing inline: the CSP allows scripts from files only


def test_the_compare_page_explains_a_refused_comparison(evaluated, owner):
    client = Client()
    client.force_login(owner)
    response = client.get("/models/compare/", {"models": "abc"})
    assert response.status_code == 400
    assert "&#x27;abc&#x27; is not a model id." in response.content.decode()
    response = client.get("/models/compare/")
    assert response.status_code == 400
    assert "Choose models to compare on the models page." in response.content.decode()


def test_the_models_page_filters_by_dataset_and_offers_models_to_compare(evaluated, blood, owner,
                                                                        model_files):
    other = DatasetFactory(owner=owner, name="Elsewhere")
    register_model(other, owner, saved_model_file(model_files, seed=0), name="elsewhere-model")
    client = Client()
    client.force_login(owner)
    everything = client.get("/models/").content.decode()
    assert "elsewhere-model v1" in everything and "small v1" in everything
    filtered = client.get("/models/", {"dataset": blood.pk}).content.decode()
    assert "elsewhere-model v1" not in filtered
    for model in evaluated:
        assert f'name="models" value="{model.pk}"' in filtered
    assert f'<input type="hidden" name="dataset" value="{blood.pk}">' in filtered

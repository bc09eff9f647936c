"""The registry's pages as a user reads them: the model list, a model's page, the comparison."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from classifier import selectors
from classifier.models import ModelEvaluation, Visibility
from tests.factories import DatasetFactory, ModelVersionFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner():
    return UserFactory(username="mona")


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood")


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _model(dataset, **fields):
    return ModelVersionFactory(dataset=dataset, owner=dataset.owner, **fields)


# --- the model list ------------------------------------------------------------------------------


def test_a_dataset_filter_that_is_not_an_id_is_a_400_with_the_reason_and_lists_nothing(
        dataset, owner):
    model = _model(dataset)
    response = client_for(owner).get("/models/", {"dataset": "blood"})

    assert response.status_code == 400
    html = response.content.decode()
    assert "&#x27;blood&#x27; is not a dataset id" in html
    assert f'name="models" value="{model.pk}"' not in html


def test_the_model_list_is_paged_and_keeps_the_filter_on_the_other_pages(dataset, owner):
    models = [_model(dataset, name=f"m{index}") for index in range(53)]
    client = client_for(owner)

    first = client.get("/models/", {"dataset": dataset.pk}).content.decode()
    assert first.count('name="models" value=') == 50
    assert "page 1 of 2 (53 models)" in first
    assert f'href="?dataset={dataset.pk}&amp;page=2"' in first

    second = client.get("/models/", {"dataset": dataset.pk, "page": 2}).content.decode()
    listed = [int(pk) for pk in re.findall(r'name="models" value="(\d+)"', second)]
    assert len(listed) == 3 and set(listed) <= {m.pk for m in models}


# --- a model's page --------------------------------------------------------------------------------


def test_a_public_model_of_a_dataset_the_user_cannot_see_links_to_neither_it_nor_a_comparison(
        dataset):
    model = _model(dataset, visibility=Visibility.PUBLIC)
    stranger = client_for(UserFactory(username="sam"))

    page = stranger.get(f"/models/{model.pk}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"/datasets/{dataset.pk}/" not in html
    assert "Compare…" not in html
    assert "Tiny blood (a dataset you cannot open)" in html
    # Comparing it is refused as the API refuses it: the dataset is not the stranger's to see.
    assert stranger.get("/models/compare/", {"models": model.pk}).status_code == 404
    assert stranger.get("/api/v1/models/compare/",
                        {"dataset": dataset.pk, "models": model.pk}).status_code == 404


def test_undefined_sensitivity_and_specificity_read_as_a_dash_not_a_blank(owner):
    breast = DatasetFactory(owner=owner, class_names=["malignant", "normal, benign"],
                            class_counts={"train": [3, 3], "val": [2, 2], "test": [2, 2]})
    undefined = {"positive_class": 0, "positive_class_name": "malignant", "sensitivity": 1.0,
                 "specificity": None}
    model = _model(breast, decision_threshold=0.3, metrics={
        "accuracy": 0.5, "binary": undefined,
        "at_threshold": {"accuracy": 0.5, **undefined},
    })

    html = client_for(owner).get(f"/models/{model.pk}/").content.decode()
    table = html[html.index('id="threshold-table"'):]
    table = table[:table.index("</table>")]
    cells = re.findall(r'<td class="num">([^<]*)</td>', table)
    assert cells == ["0.5000", "1.0000", "—", "0.5000", "1.0000", "—"]


# --- the comparison page -----------------------------------------------------------------------------


def test_the_compare_table_lists_the_most_accurate_model_first_and_unmeasured_ones_last(
        dataset, owner):
    low = _model(dataset, name="low", metrics={"accuracy": 0.2})
    unmeasured = _model(dataset, name="unmeasured", metrics={})
    high = _model(dataset, name="high", metrics={"accuracy": 0.9})

    html = client_for(owner).get(
        "/models/compare/", {"models": f"{low.pk},{unmeasured.pk},{high.pk}"}).content.decode()
    rows = re.findall(r'<tr class="measured" data-model="(\d+)"', html)
    assert rows == [str(high.pk), str(low.pk), str(unmeasured.pk)]
    # Sorting a column starts from its best value: the lowest for ECE and timings.
    assert 'data-kind="ratio" data-better="lower"' in html  # ECE
    assert 'data-kind="ratio" data-better="higher"' in html  # accuracy


def _evaluated(dataset, name: str, predicted) -> object:
    model = _model(dataset, name=name, metrics={"accuracy": 0.5})
    ModelEvaluation.objects.create(
        model_version=model, dataset=dataset, dataset_sha256=dataset.sha256, split="test",
        n=len(predicted), predicted=list(predicted), probabilities="evaluations/none.npy")
    return model


def test_a_mcnemar_p_value_too_small_for_four_decimals_is_not_shown_as_zero(owner):
    many = DatasetFactory(owner=owner, class_counts={"train": [2, 2], "val": [1, 1],
                                                     "test": [40, 40]})
    labels = selectors.dataset_arrays(dataset=many).labels("test").tolist()
    right = _evaluated(many, "right", labels)
    wrong = _evaluated(many, "wrong", [1 - label for label in labels])

    html = client_for(owner).get(
        "/models/compare/", {"models": f"{right.pk},{wrong.pk}"}).content.decode()
    table = html[html.index('id="mcnemar-table"'):]
    assert "&lt; 0.0001</span> <span class=\"muted\">(80 / 0)" in table
    assert "0.0000" not in table


def test_with_three_models_each_mcnemar_p_value_also_shows_holms_adjustment(owner):
    many = DatasetFactory(owner=owner, class_counts={"train": [2, 2], "val": [1, 1],
                                                     "test": [10, 10]})
    labels = selectors.dataset_arrays(dataset=many).labels("test").tolist()
    # b / c of the pairs: right-half 6/0 and right-same 6/0 (p 0.03125 each), half-same 0/0
    # (p 1). Holm: 3 x 0.03125, then max(2 x 0.03125, that), then 1.
    right = _evaluated(many, "right", labels)
    wrong = [1 - label for label in labels]
    half = _evaluated(many, "half", labels[:14] + wrong[14:])
    same = _evaluated(many, "same", labels[:14] + wrong[14:])

    comparison = client_for(owner).get(
        "/api/v1/models/compare/", {"dataset": many.pk, "models": f"{right.pk},{half.pk},{same.pk}"}
    ).json()["mcnemar"]["matrix"]
    assert comparison[0][1]["p_value"] == pytest.approx(0.03125)
    assert [comparison[0][1]["p_holm"], comparison[0][2]["p_holm"], comparison[1][2]["p_holm"]] \
        == pytest.approx([0.09375, 0.09375, 1.0])

    html = client_for(owner).get(
        "/models/compare/", {"models": f"{right.pk},{half.pk},{same.pk}"}).content.decode()
    table = html[html.index('id="mcnemar-table"'):]
    assert "0.0312</span> <span class=\"muted\">(6 / 0)</span> <span class=\"muted holm\"" in table
    assert "Holm 0.0938" in table


def test_one_model_gets_no_empty_mcnemar_table_but_a_word_on_what_it_needs(dataset, owner):
    model = _model(dataset)
    html = client_for(owner).get("/models/compare/", {"models": model.pk}).content.decode()
    assert 'id="mcnemar-table"' not in html
    assert "A test needs two models" in html


def test_the_target_sensitivity_of_a_threshold_is_shown_as_it_was_asked_for(owner):
    breast = DatasetFactory(owner=owner, class_names=["malignant", "normal, benign"],
                            class_counts={"train": [3, 3], "val": [2, 2], "test": [2, 2]})
    point = {"positive_class": 0, "positive_class_name": "malignant", "target_sensitivity": 0.925,
             "threshold": 0.25, "sensitivity": 1.0, "specificity": 0.5}
    model = _model(breast, decision_threshold=0.75, val_metrics={"operating_point": point})

    html = client_for(owner).get(f"/models/{model.pk}/").content.decode()
    assert "sensitivity ≥ 0.925 of class 0 (malignant)" in html

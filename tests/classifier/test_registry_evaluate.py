"""Evaluating a model on a split of its dataset: which splits, and models whose outputs do not
match the dataset's classes."""

from __future__ import annotations

import pytest
from django.test import Client

from classifier.models import ModelEvaluation
from tests.classifier.test_registry import register_model, saved_model_file
from tests.factories import DatasetFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_evaluation(settings, tmp_path):
    settings.MODEL_EVALUATION_BOOTSTRAP = 50
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate-models")


@pytest.fixture
def owner():
    return UserFactory(username="evan")


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood")


def api(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def evaluate(client, model, **body):
    return client.post(f"/api/v1/models/{model.pk}/evaluate/", body,
                       content_type="application/json")


def test_the_validation_split_can_be_evaluated_and_the_training_split_is_refused(
        dataset, owner, model_files):
    model = register_model(dataset, owner, saved_model_file(model_files, seed=0), name="m")
    client = api(owner)

    response = evaluate(client, model, split="train")
    assert response.status_code == 400
    assert "split" in response.json()
    assert not ModelEvaluation.objects.filter(model_version=model).exists()

    response = evaluate(client, model, split="val")
    assert response.status_code == 200
    model.refresh_from_db()
    assert response.json()["evaluation"]["split"] == "val"
    assert model.val_metrics["n"] == sum(dataset.class_counts["val"])
    assert model.metrics == {}  # the test report is left alone
    assert ModelEvaluation.objects.get(model_version=model).split == "val"


def test_a_model_whose_outputs_are_not_the_datasets_classes_is_refused_with_the_reason(
        dataset, owner, model_files):
    two_outputs = saved_model_file(model_files, num_classes=2, seed=5)
    model = register_model(dataset, owner, two_outputs, name="mismatched")

    response = evaluate(api(owner), model)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "gives 2 class probabilities" in detail
    assert "has 3 classes (adenoma, carcinoma, normal)" in detail
    assert not ModelEvaluation.objects.filter(model_version=model).exists()

    page = api(owner).post(f"/models/{model.pk}/evaluate/", follow=True)
    assert page.status_code == 200
    assert "gives 2 class probabilities" in page.content.decode()

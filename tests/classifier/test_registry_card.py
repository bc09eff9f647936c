"""Model cards say what was recorded, in words a reader can use: no Python reprs, no claims the
records do not support."""

from __future__ import annotations

import pytest

from classifier import selectors_registry
from classifier.models import Dataset
from medml.model_card import render_model_card
from tests.factories import DatasetFactory, ModelVersionFactory, UserFactory, medmnist_arrays, npz_bytes

DATASET = {"name": "Blood", "image_shape": [28, 28, 3], "class_names": ["a", "b"]}
CONFIG = {
    "architecture": "compact_cnn", "epochs": 3, "learning_rate": 0.001,
    "augmentation": {"enabled": True, "rotation_range": 15.0, "horizontal_flip": False},
    "early_stopping_patience": None, "dropout": None, "tta": False, "members": [1, 2],
}


def _card(**facts) -> str:
    return render_model_card({"name": "m", "version": 1, "dataset": DATASET, **facts})


def _configuration_line(card: str) -> str:
    return next(line for line in card.splitlines() if line.startswith("Configuration:"))


def test_the_configuration_is_written_without_python_reprs():
    line = _configuration_line(_card(config=CONFIG))

    for python in ("None", "True", "False", "{", "'"):
        assert python not in line, line
    assert "`augmentation.enabled=true`" in line
    assert "`augmentation.rotation_range=15.0`" in line
    assert "`augmentation.horizontal_flip=false`" in line
    assert "`early_stopping_patience=none`" in line and "`dropout=none`" in line
    assert "`members=[1, 2]`" in line and "`learning_rate=0.001`" in line


def test_source_preprocessing_and_numbers_that_are_not_finite_are_written_for_readers():
    dataset = {**DATASET, "source_preprocessing": {"crop": "none", "channels": 3,
                                                    "grayscale": False}}
    metrics = {"accuracy": 0.5, "log_loss": float("nan"), "n": 4}
    card = _card(dataset=dataset, metrics=metrics)

    assert "**Source preprocessing:** crop: none; channels: 3; grayscale: false" in card
    assert "| Log loss | — |" in card
    assert "nan" not in card


def test_only_a_published_benchmark_is_called_one_and_only_small_images_low_resolution():
    uploaded = _card()
    assert "public benchmark" not in uploaded
    assert "Trained and tested on one dataset;" in uploaded
    assert "far below clinical resolution" in uploaded

    benchmark = _card(public_benchmark="MedMNIST bloodmnist")
    assert "Trained and tested on one public benchmark (MedMNIST bloodmnist);" in benchmark

    large = _card(dataset={**DATASET, "image_shape": [224, 224, 3]})
    assert "Inputs are 224\u00d7224 images with 3 channel(s)." in large
    assert "far below clinical resolution" not in large


def test_an_evaluation_with_test_time_augmentation_says_so():
    metrics = {"accuracy": 0.5, "n": 4, "evaluation": {"tta": True}}
    assert "test-time augmentation" in _card(metrics=metrics)
    assert "test-time augmentation" not in _card(metrics={**metrics, "evaluation": {"tta": False}})


def test_an_ensemble_is_named_as_one_and_its_validation_accuracy_is_its_own():
    history = [{"epoch": 1, "val_accuracy": 0.7, "member": 1},
               {"epoch": 2, "val_accuracy": 0.9, "member": 2}]
    card = _card(architecture="compact_cnn", config={"ensemble_size": 2}, history=history,
                 val_metrics={"accuracy": 0.95})

    assert "an ensemble of 2 such models, their probabilities averaged" in card
    assert "**Validation accuracy of this model:** 0.9500" in card
    assert "**Best validation accuracy of a member:** 0.9000 at epoch 2" in card
    single = _card(architecture="compact_cnn", config={"ensemble_size": 1}, history=history)
    assert "an ensemble of" not in single and "**Best validation accuracy:** 0.9000" in single


@pytest.mark.django_db
def test_the_registry_tells_the_card_whether_the_dataset_is_a_published_benchmark(
        published_checksums):
    owner = UserFactory()
    published_checksums("bloodmnist.npz", npz_bytes(medmnist_arrays()))
    official = DatasetFactory(owner=owner, filename="bloodmnist.npz")
    assert official.source == Dataset.Source.MEDMNIST
    uploaded = DatasetFactory(owner=owner)

    def card(dataset):
        model = ModelVersionFactory(dataset=dataset, owner=owner)
        return selectors_registry.model_card_markdown(model_version=model)

    assert "one public benchmark (MedMNIST bloodmnist)" in card(official)
    assert "public benchmark" not in card(uploaded)


def test_the_target_sensitivity_of_a_threshold_is_written_as_it_was_asked_for():
    point = {"positive_class": 0, "target_sensitivity": 0.925, "threshold": 0.25,
             "sensitivity": 0.93, "specificity": 0.5}
    card = _card(dataset={**DATASET, "class_names": ["malignant", "benign"]},
                 decision_threshold=0.75, operating_point=point)
    assert "a sensitivity of at least 92.5% for class 0 (malignant)" in card

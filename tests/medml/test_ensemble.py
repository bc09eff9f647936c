"""Ensembles: trained member by member with checkpoints, kept as one averaging model, served
through ONNX Runtime and explained with Grad-CAM like any other model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medml import infer
from medml.architectures import build_model
from medml.config import ConfigError, TrainConfig
from medml.ensemble import EnsembleGradCam, build_ensemble, ensemble_members, explainer_for
from medml.evaluate import predict_proba
from medml.explain import GradCam
from medml.fit import train
from tests.medml.test_fit import RecordingHooks, synthetic_data


def config(**overrides):
    values = {"architecture": "compact_cnn", "epochs": 2, "batch_size": 16,
              "learning_rate": 3e-3, "schedule": "constant", "ensemble_size": 2, "seed": 5}
    return TrainConfig.from_dict({**values, **overrides})


@pytest.fixture(scope="module")
def data():
    return synthetic_data()


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ensemble")
    hooks = RecordingHooks()
    result = train(config=config(), data=data, workdir=workdir, hooks=hooks)
    return workdir, hooks, result


def test_an_ensemble_trains_each_member_with_its_own_seed_and_reports_one_run(trained):
    workdir, hooks, result = trained
    assert hooks.begins == [{"total_epochs": 4, "resumed_from_epoch": 0}]
    assert [(m["epoch"], m["member"]) for m in hooks.epochs] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [(h["epoch"], h["member"]) for h in result.history] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert [m["seed"] for m in result.members] == [5, 6]
    assert all(1 <= m["best_epoch"] <= 2 for m in result.members)
    assert result.epochs_completed == 4 and not result.cancelled
    assert result.model_path == workdir / "ensemble.keras" and result.model_path.exists()
    assert hooks.logged("Member 2/2: ")
    assert result.test_metrics["n"] == 24 and result.val_metrics["n"] == 24
    assert result.best_metric == result.val_metrics["accuracy"]


def test_the_ensemble_is_the_mean_of_its_members_best_checkpoints(trained, data):
    workdir, _, result = trained
    model = keras.models.load_model(result.model_path)
    members = [keras.models.load_model(workdir / f"member-{i}" / "best.keras") for i in range(2)]
    images = data.images("test")
    expected = np.mean([predict_proba(m, images) for m in members], axis=0)
    np.testing.assert_allclose(predict_proba(model, images), expected, atol=1e-6)
    assert [m.name for m in ensemble_members(model)] == ["member_0", "member_1"]
    assert result.num_params == sum(m.count_params() for m in members)


def test_members_differ_because_their_seeds_differ(trained, data):
    workdir, _, _ = trained
    members = [keras.models.load_model(workdir / f"member-{i}" / "best.keras") for i in range(2)]
    assert not np.allclose(members[0].get_weights()[0], members[1].get_weights()[0])


def test_a_resumed_ensemble_skips_finished_members(data, tmp_path):
    crashing = RecordingHooks(crash_at=(3, 1))  # in member 2's first epoch
    with pytest.raises(Exception, match="killed in epoch 3"):
        train(config=config(), data=data, workdir=tmp_path, hooks=crashing)
    assert (tmp_path / "member-0" / "best.keras").exists()

    resumed = RecordingHooks()
    result = train(config=config(), data=data, workdir=tmp_path, hooks=resumed)
    assert resumed.begins == [{"total_epochs": 4, "resumed_from_epoch": 2}]
    assert [m["epoch"] for m in resumed.epochs] == [3, 4]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.model_path.exists() and not result.cancelled


def test_cancelling_an_ensemble_stops_it_and_keeps_no_model(data, tmp_path):
    hooks = RecordingHooks(stop_after=(3, 1))
    result = train(config=config(), data=data, workdir=tmp_path, hooks=hooks)
    assert result.cancelled and result.model_path is None and result.test_metrics is None
    assert not (tmp_path / "ensemble.keras").exists()
    assert len(result.members) == 2


def test_the_ensemble_serves_through_onnx_runtime_like_keras(trained, data):
    _, _, result = trained
    predictor = infer.Predictor.from_file(result.model_path, runtime="onnxruntime", threads=1)
    assert predictor.runtime == "onnxruntime"
    images = data.images("test")[:8]
    reference = predict_proba(keras.models.load_model(result.model_path), images)
    np.testing.assert_allclose(predictor.predict(images), reference, atol=1e-4)
    assert isinstance(predictor.explainer, EnsembleGradCam)


def test_ensemble_grad_cam_is_the_normalised_mean_of_the_members_maps(trained, data):
    _, _, result = trained
    model = keras.models.load_model(result.model_path)
    images, classes = data.images("test")[:4], [0, 1, 2, 0]
    cam = explainer_for(model)
    maps = cam.heatmaps(images, classes)
    assert maps.shape == (4, 16, 16) and maps.dtype == np.float32
    members = [GradCam(m).heatmaps(images, classes) for m in ensemble_members(model)]
    mean = np.mean(members, axis=0)
    peak = mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(maps, np.where(peak > 0, mean / np.maximum(peak, 1e-12), 0), atol=1e-6)
    assert isinstance(explainer_for(ensemble_members(model)[0]), GradCam)


def test_members_that_do_not_fit_together_are_refused():
    rgb = build_model("compact_cnn", input_shape=(16, 16, 3), num_classes=3, width=4)
    gray = build_model("compact_cnn", input_shape=(16, 16, 1), num_classes=3, width=4)
    two = build_model("compact_cnn", input_shape=(16, 16, 3), num_classes=2, width=4)
    with pytest.raises(ValueError, match="at least two members"):
        build_ensemble([rgb])
    with pytest.raises(ValueError, match="same images and predict the same classes"):
        build_ensemble([rgb, gray])
    with pytest.raises(ValueError, match="same images and predict the same classes"):
        build_ensemble([rgb, two])
    assert ensemble_members(rgb) == []


@pytest.mark.parametrize("size", [0, 11, "3"])
def test_an_ensemble_size_out_of_range_is_a_config_error(size):
    with pytest.raises(ConfigError) as error:
        config(ensemble_size=size)
    assert "ensemble_size" in error.value.errors

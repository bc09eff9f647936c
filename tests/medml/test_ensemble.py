"""Ensembles: trained member by member with checkpoints, kept as one averaging model, served
through ONNX Runtime and explained with Grad-CAM like any other model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medml import dataset_io, infer
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


@pytest.mark.parametrize("crash_epoch", [3, 4], ids=["in member 2's first epoch",
                                                   "in member 2's second epoch"])
def test_a_resumed_ensemble_skips_finished_members(data, tmp_path, crash_epoch):
    crashing = RecordingHooks(crash_at=(crash_epoch, 1))
    with pytest.raises(Exception, match=f"killed in epoch {crash_epoch}"):
        train(config=config(), data=data, workdir=tmp_path, hooks=crashing)
    assert (tmp_path / "member-0" / "member.json").exists()
    assert not (tmp_path / "member-1" / "member.json").exists()

    resumed = RecordingHooks()
    result = train(config=config(), data=data, workdir=tmp_path, hooks=resumed)
    # The job hears where it really is: after member 1 and member 2's completed epochs.
    assert resumed.begins == [{"total_epochs": 4, "resumed_from_epoch": crash_epoch - 1}]
    assert [m["epoch"] for m in resumed.epochs] == list(range(crash_epoch, 5))
    assert resumed.logged("Member 1/2 finished in an earlier run.")
    assert not any(m.startswith("Member 1/2: ") for m in resumed.messages)  # not trained again
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.resumed_from_epoch == crash_epoch - 1
    assert result.model_path.exists() and not result.cancelled


def test_an_ensemble_run_again_after_it_finished_keeps_the_same_model_file(data, tmp_path):
    """A run that died after averaging (before its model was registered) is run again: it
    trains nothing and reuses the averaged file, whose sha256 names the stored artifact."""
    first = train(config=config(), data=data, workdir=tmp_path, hooks=RecordingHooks())
    digest = dataset_io.sha256_of(first.model_path)

    again = RecordingHooks()
    result = train(config=config(), data=data, workdir=tmp_path, hooks=again)
    assert again.begins == [{"total_epochs": 4, "resumed_from_epoch": 4}]
    assert again.epochs == []
    assert dataset_io.sha256_of(result.model_path) == digest
    assert result.val_metrics == first.val_metrics
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.members == first.members


def test_a_finished_member_of_another_config_is_trained_again(data, tmp_path):
    train(config=config(epochs=1), data=data, workdir=tmp_path, hooks=RecordingHooks())
    hooks = RecordingHooks()
    train(config=config(epochs=1, learning_rate=1e-3), data=data, workdir=tmp_path, hooks=hooks)
    assert [m["epoch"] for m in hooks.epochs] == [1, 2]
    assert not hooks.logged("finished in an earlier run")


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

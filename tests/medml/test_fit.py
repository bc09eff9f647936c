import itertools
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from medml import fit as fit_module
from medml.architectures import PretrainedWeightsUnavailableError, build_model
from medml.augment import add_featurewise_normalization, build_augmenter, channel_statistics
from medml.config import AugmentationConfig, TrainConfig
from medml.data import DatasetArrays
from medml.evaluate import predict_proba
from medml.fit import TrainingHooks, dataset_fingerprint, learning_rate_for_epoch, train

HISTORY_KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "seconds"}


def synthetic_split(counts, *, shape=(16, 16, 1), seed=0):
    """Images whose class sets their brightness (and a stripe), with noise: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(count, label) for label, count in enumerate(counts)])
    images = rng.integers(0, 50, size=(len(labels), *shape))
    images += 70 * labels[:, None, None, None]
    for label in range(len(counts)):
        images[labels == label, :, 2 * label : 2 * label + 2, :] = 255
    order = rng.permutation(len(labels))
    return images[order].astype(np.uint8), labels[order].astype(np.int64)


def synthetic_data(train_counts=(20, 20, 20), *, shape=(16, 16, 1)):
    num_classes = len(train_counts)
    return DatasetArrays(
        splits={
            "train": synthetic_split(train_counts, shape=shape, seed=0),
            "val": synthetic_split([8] * num_classes, shape=shape, seed=1),
            "test": synthetic_split([8] * num_classes, shape=shape, seed=2),
        },
        class_names=[f"class {index}" for index in range(num_classes)],
    )


class SimulatedCrash(Exception):
    pass


class RecordingHooks(TrainingHooks):
    def __init__(self, *, stop_after=None, crash_at=None):
        self.stop_after = stop_after
        self.crash_at = crash_at
        self.begins = []
        self.epochs = []
        self.batches = []
        self.messages = []

    def on_train_begin(self, *, total_epochs, resumed_from_epoch, device):
        self.begins.append({"total_epochs": total_epochs, "resumed_from_epoch": resumed_from_epoch})
        self.device = device

    def on_epoch_end(self, *, epoch, total_epochs, metrics):
        self.epochs.append(metrics)

    def on_batch_end(self, *, epoch, batch, total_batches):
        self.batches.append((epoch, batch, total_batches))
        if self.crash_at == (epoch, batch):
            raise SimulatedCrash(f"killed in epoch {epoch}, batch {batch}")

    def should_stop(self):
        return self.stop_after is not None and self.stop_after in self.batches_done()

    def batches_done(self):
        return [(epoch, batch) for epoch, batch, _ in self.batches]

    def log(self, message):
        self.messages.append(message)

    def logged(self, text):
        return any(text in message for message in self.messages)


def config(**overrides):
    values = {
        "architecture": "compact_cnn",
        "epochs": 3,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "schedule": "constant",
    }
    values.update(overrides)
    return TrainConfig.from_dict(values)


def read_state(workdir):
    return json.loads((workdir / "state.json").read_text())


# --------------------------------------------------------------------------------------------
# Fast checks of the pieces


def test_step_schedule_divides_by_ten_after_half_and_three_quarters():
    step = config(epochs=8, schedule="step", learning_rate=1.0)

    rates = [learning_rate_for_epoch(step, epoch) for epoch in range(1, 9)]

    assert rates == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])


@pytest.mark.parametrize(
    ("epochs", "expected"),
    [
        (1, [1]),
        (2, [1, 0.1]),
        (3, [1, 1, 0.1]),
        (5, [1, 1, 1, 0.1, 0.01]),
    ],
)
def test_step_schedule_decays_only_once_the_milestone_epochs_are_done(epochs, expected):
    step = config(epochs=epochs, schedule="step", learning_rate=1.0)

    rates = [learning_rate_for_epoch(step, epoch) for epoch in range(1, epochs + 1)]

    assert rates == pytest.approx(expected)


def test_step_schedule_follows_medmnist_v2_over_100_epochs():
    step = config(epochs=100, schedule="step", learning_rate=1.0)

    rates = {epoch: learning_rate_for_epoch(step, epoch) for epoch in (50, 51, 75, 76, 100)}

    assert rates == pytest.approx({50: 1, 51: 0.1, 75: 0.1, 76: 0.01, 100: 0.01})


def test_cosine_schedule_warms_up_then_decays():
    cosine = config(epochs=6, schedule="cosine", warmup_epochs=2, learning_rate=1.0)

    rates = [learning_rate_for_epoch(cosine, epoch) for epoch in range(1, 7)]

    assert rates[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(later < earlier for earlier, later in itertools.pairwise(rates[2:]))
    assert rates[-1] > 0


def test_unfreezing_the_backbone_divides_the_learning_rate_by_ten():
    pretrained = config(
        architecture="vgg16", pretrained=True, freeze_backbone_epochs=2, learning_rate=1.0
    )

    assert [learning_rate_for_epoch(pretrained, epoch) for epoch in (1, 2, 3)] == pytest.approx(
        [1.0, 1.0, 0.1]
    )


def test_no_augmenter_without_an_enabled_random_transform():
    assert build_augmenter(AugmentationConfig(), seed=0) is None
    assert build_augmenter(AugmentationConfig(horizontal_flip=True), seed=0) is None
    assert build_augmenter(AugmentationConfig(enabled=True), seed=0) is None


def test_flips_and_quarter_turns_move_pixels_without_changing_them():
    images = np.random.default_rng(0).integers(0, 256, size=(32, 6, 6, 2)).astype(np.uint8)
    augmenter = build_augmenter(
        AugmentationConfig(enabled=True, horizontal_flip=True, rotate90=True), seed=0
    )

    output = augmenter(images, seed=tf.constant([1, 2])).numpy()

    assert output.dtype == np.uint8
    assert output.shape == images.shape
    for original, augmented in zip(images, output, strict=True):
        variants = [np.rot90(img, k) for img in (original, original[:, ::-1]) for k in range(4)]
        assert any(np.array_equal(augmented, variant) for variant in variants)
    assert not np.array_equal(output, images)


def test_augmentation_is_fixed_by_its_seed():
    images = np.random.default_rng(1).integers(0, 256, size=(8, 10, 10, 3)).astype(np.uint8)
    aug = AugmentationConfig(
        enabled=True,
        rotation_range=30,
        zoom_range=0.2,
        width_shift_range=0.1,
        height_shift_range=0.1,
        brightness_range=0.2,
        contrast_range=0.2,
    )
    augmenter = build_augmenter(aug, seed=0)

    first = augmenter(images, seed=tf.constant([5, 0])).numpy()
    again = augmenter(images, seed=tf.constant([5, 0])).numpy()
    other = augmenter(images, seed=tf.constant([5, 1])).numpy()
    unseeded = [build_augmenter(aug, seed=3)(images).numpy() for _ in range(2)]

    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(unseeded[0], unseeded[1])
    assert first.dtype == np.uint8


def test_featurewise_normalization_standardises_inside_the_saved_model(tmp_path):
    rng = np.random.default_rng(0)
    images = (rng.normal([60, 120, 200], [10, 20, 30], size=(50, 8, 8, 3))).clip(0, 255)
    images = images.astype(np.uint8)
    base = build_model("compact_cnn", input_shape=(8, 8, 3), num_classes=2)

    model = add_featurewise_normalization(base, images)

    assert [layer.name for layer in model.layers[:3]] == [
        "image",
        "featurewise_normalization",
        "rescale",
    ]
    # The model's own 0-255 -> 0-1 rescaling now yields z = (x - mean) / std.
    rescaled = keras.Model(model.input, model.get_layer("rescale").output)(images).numpy()
    mean, std = channel_statistics(images)
    np.testing.assert_allclose(rescaled, (images - mean) / std, atol=1e-4)
    np.testing.assert_allclose(rescaled.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    model.save(tmp_path / "model.keras")
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(reloaded(images).numpy(), model(images).numpy(), atol=1e-6)


def test_the_fingerprint_changes_with_the_data():
    data = synthetic_data()
    changed = synthetic_data()
    changed.splits["val"][0][0, 0, 0, 0] ^= 1

    assert dataset_fingerprint(data) == dataset_fingerprint(synthetic_data())
    assert dataset_fingerprint(data) != dataset_fingerprint(changed)


def test_missing_pretrained_weights_fail_before_anything_is_written(tmp_path):
    workdir = tmp_path / "run"

    with pytest.raises(PretrainedWeightsUnavailableError):
        train(
            config=config(architecture="vgg16", pretrained=True, freeze_backbone_epochs=1),
            data=synthetic_data(shape=(28, 28, 1)),
            workdir=workdir,
            weights_dir=tmp_path / "no-weights",
        )

    assert not workdir.exists()


def test_val_auc_monitoring_needs_every_class_in_validation(tmp_path):
    data = synthetic_data()
    images, labels = data.splits["val"]
    data.splits["val"] = (images[labels != 2], labels[labels != 2])

    with pytest.raises(ValueError, match="val_auc"):
        train(config=config(monitor="val_auc"), data=data, workdir=tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (synthetic_data(shape=(7, 7, 1)), r"images are 7x7; compact_cnn needs at least 8x8"),
        (synthetic_data(shape=(30, 6, 3)), r"images are 30x6; compact_cnn needs at least 8x8"),
        (synthetic_data(train_counts=(5,)), r"at least 2 classes; the dataset has 1"),
        (synthetic_data(shape=(16, 16, 4)), r"4 channels; models take grayscale \(1\) or RGB"),
    ],
)
def test_data_the_architecture_cannot_take_fails_before_anything_is_written(
    tmp_path, data, message
):
    workdir = tmp_path / "run"

    with pytest.raises(ValueError, match=message):
        train(config=config(), data=data, workdir=workdir)

    assert not workdir.exists()


# --------------------------------------------------------------------------------------------
# Training runs


@pytest.mark.slow
def test_it_trains_checkpoints_and_evaluates(tmp_path):
    # blood_cnn_85 has no batch normalization, whose moving statistics would need more steps
    # than a few dozen images give to settle.
    hooks = RecordingHooks()
    data = synthetic_data()

    result = train(
        config=config(architecture="blood_cnn_85", epochs=3),
        data=data,
        workdir=tmp_path,
        hooks=hooks,
    )

    assert [entry["epoch"] for entry in result.history] == [1, 2, 3]
    for entry in result.history:
        assert set(entry) >= HISTORY_KEYS
    assert hooks.begins == [{"total_epochs": 3, "resumed_from_epoch": 0}]
    assert hooks.epochs == result.history
    assert hooks.batches == [(epoch, batch, 4) for epoch in (1, 2, 3) for batch in (1, 2, 3, 4)]
    assert result.model_path == tmp_path / "best.keras"
    assert result.history[result.best_epoch - 1]["val_accuracy"] == result.best_metric
    assert result.best_metric == max(entry["val_accuracy"] for entry in result.history)
    assert result.test_metrics["accuracy"] > 0.6  # chance is 1/3
    assert result.val_metrics["accuracy"] == pytest.approx(result.best_metric)
    assert not result.cancelled
    assert not result.stopped_early
    assert result.epochs_completed == 3
    assert result.num_params > 0
    assert result.train_seconds > 0
    assert result.device
    best = keras.models.load_model(result.model_path)
    test_accuracy = np.mean(predict_proba(best, data.images("test")).argmax(1) == data.labels("test"))
    assert test_accuracy == pytest.approx(result.test_metrics["accuracy"])
    # Validation metrics describe the saved best checkpoint too, however they were computed.
    val_accuracy = np.mean(predict_proba(best, data.images("val")).argmax(1) == data.labels("val"))
    assert val_accuracy == pytest.approx(result.val_metrics["accuracy"])
    state = read_state(tmp_path)
    assert state["epochs_completed"] == 3
    assert state["history"] == result.history
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "best.keras",
        "last.keras",
        "state.json",
    ]


@pytest.mark.slow
def test_cancelling_stops_within_the_epoch_and_keeps_the_checkpoint(tmp_path):
    hooks = RecordingHooks(stop_after=(2, 2))

    result = train(config=config(epochs=3), data=synthetic_data(), workdir=tmp_path, hooks=hooks)

    assert result.cancelled
    assert result.epochs_completed == 1
    assert len(result.history) == 1
    assert result.test_metrics is None
    assert result.val_metrics == {}
    assert hooks.batches_done()[-1] == (2, 2)  # epoch 2 has 4 batches
    assert result.model_path == tmp_path / "best.keras"
    assert read_state(tmp_path)["epochs_completed"] == 1
    assert (tmp_path / "last.keras").exists()
    assert hooks.logged("cancelled")


@pytest.mark.slow
def test_it_resumes_after_being_killed_mid_epoch(tmp_path):
    data = synthetic_data()
    crashing = RecordingHooks(crash_at=(3, 1))
    with pytest.raises(SimulatedCrash):
        train(config=config(epochs=4), data=data, workdir=tmp_path, hooks=crashing)
    saved_history = read_state(tmp_path)["history"]
    assert [entry["epoch"] for entry in saved_history] == [1, 2]

    hooks = RecordingHooks()
    result = train(config=config(epochs=4), data=data, workdir=tmp_path, hooks=hooks)

    assert hooks.begins == [{"total_epochs": 4, "resumed_from_epoch": 2}]
    assert hooks.logged("Resuming from epoch 3")
    assert {epoch for epoch, _, _ in hooks.batches} == {3, 4}
    assert [entry["epoch"] for entry in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == saved_history
    assert result.resumed_from_epoch == 2
    assert result.test_metrics is not None


@pytest.mark.slow
def test_an_interrupted_checkpoint_is_completed_on_the_next_run(tmp_path, monkeypatch):
    data = synthetic_data()
    two_epochs = config(epochs=2)
    original = fit_module._Checkpoints._apply_pending

    def killed_before_renaming_epoch_2(self, pending):
        if any("e0002" in name for name in pending.values()):
            raise SimulatedCrash("killed after state.json was written")
        original(self, pending)

    monkeypatch.setattr(fit_module._Checkpoints, "_apply_pending", killed_before_renaming_epoch_2)
    with pytest.raises(SimulatedCrash):
        train(config=two_epochs, data=data, workdir=tmp_path)
    monkeypatch.undo()
    assert read_state(tmp_path)["epochs_completed"] == 2
    assert any(path.name.startswith(".pending-e0002") for path in tmp_path.iterdir())

    hooks = RecordingHooks()
    result = train(config=two_epochs, data=data, workdir=tmp_path, hooks=hooks)

    # Epoch 2 was committed, so nothing is retrained: the pending files became the checkpoints.
    assert hooks.batches == []
    assert result.epochs_completed == 2
    steps_per_epoch = 4
    last = keras.models.load_model(tmp_path / "last.keras")
    assert int(last.optimizer.iterations.numpy()) == 2 * steps_per_epoch
    assert not any(path.name.startswith(".pending") for path in tmp_path.iterdir())

    changed = RecordingHooks()
    rerun = train(config=config(epochs=1, seed=1), data=data, workdir=tmp_path, hooks=changed)

    assert changed.logged("configuration differs")
    assert changed.begins == [{"total_epochs": 1, "resumed_from_epoch": 0}]
    assert len(rerun.history) == 1


def test_the_clean_final_epochs_train_on_the_images_as_they_are(tmp_path):
    hooks = RecordingHooks()
    clean_end = config(epochs=3, clean_final_epochs=1,
                       augmentation={"enabled": True, "rotation_range": 20.0})

    result = train(config=clean_end, data=synthetic_data(), workdir=tmp_path, hooks=hooks,
                   evaluate_test=False)

    assert [entry["augmented"] for entry in result.history] == [True, True, False]
    assert hooks.logged("Augmentation off from epoch 3")


@pytest.mark.slow
def test_two_phase_training_augments_only_in_phase_2(tmp_path):
    hooks = RecordingHooks()
    data = synthetic_data(train_counts=(30, 10, 8))
    two_phase = config(
        epochs=3,
        two_phase=True,
        phase1_epochs=1,
        optimizer="sgd",
        learning_rate=0.05,
        schedule="step",
        imbalance="balanced_sampling",
        augmentation={
            "enabled": True,
            "horizontal_flip": True,
            "rotate90": True,
            "featurewise_normalization": True,
        },
    )

    result = train(config=two_phase, data=data, workdir=tmp_path, hooks=hooks, evaluate_test=False)

    assert [entry["augmented"] for entry in result.history] == [False, True, True]
    assert hooks.logged("Phase 2: augmentation on from epoch 2")
    # Step schedule over 3 epochs: x0.1 once 1.5 epochs are done, i.e. from epoch 3.
    assert [entry["lr"] for entry in result.history] == pytest.approx([0.05, 0.05, 0.005])
    assert result.test_metrics is None
    assert result.class_weight is None
    best = keras.models.load_model(result.model_path)
    assert "featurewise_normalization" in [layer.name for layer in best.layers]


def test_a_two_phase_run_keeps_a_phase_2_epoch_even_when_phase_1_scored_better(
        tmp_path, monkeypatch):
    # The report's "77%" model is the one retrained with augmentation: a phase-1 epoch that
    # happened to score better on validation must not be what the run registers.
    data = synthetic_data(train_counts=(12, 10, 8))
    truth = data.labels("val")
    calls = []

    def scripted(model, images, **kwargs):  # right in phase 1, wrong in phase 2
        calls.append(len(images))
        right = len(calls) <= 2
        classes = truth if right else (truth + 1) % 3
        return np.eye(3, dtype=np.float32)[classes] * 0.9 + 0.1 / 3

    monkeypatch.setattr(fit_module, "predict_proba", scripted)
    two_phase = config(epochs=4, two_phase=True, phase1_epochs=2,
                       augmentation={"enabled": True, "horizontal_flip": True})

    result = train(config=two_phase, data=data, workdir=tmp_path, hooks=RecordingHooks(),
                   evaluate_test=False)

    assert [entry["val_accuracy"] for entry in result.history] == [1.0, 1.0, 0.0, 0.0]
    assert result.best_epoch == 3
    assert result.history[result.best_epoch - 1]["augmented"]


@pytest.mark.slow
def test_a_run_whose_outputs_are_never_finite_fails_with_the_reason(tmp_path, monkeypatch):
    def diverged(model, images, **kwargs):
        return np.full((len(images), int(model.output.shape[-1])), np.nan, dtype=np.float32)

    monkeypatch.setattr(fit_module, "predict_proba", diverged)
    hooks = RecordingHooks()
    with pytest.raises(fit_module.TrainingDivergedError, match=(
            r"training diverged: .* NaN or infinite after each of the 2 epoch\(s\).*"
            r"lower learning rate \(it was 0.003\)")):
        train(config=config(epochs=2), data=synthetic_data(), workdir=tmp_path, hooks=hooks)
    assert [entry["val_loss"] for entry in hooks.epochs] == [None, None]


def test_early_stopping_with_class_weights(tmp_path):
    hooks = RecordingHooks()
    data = synthetic_data(train_counts=(24, 12, 6))
    # A learning rate this small leaves the predictions, and so the validation accuracy,
    # unchanged: no epoch after the first improves on it.
    stalled = config(
        architecture="blood_cnn_85",
        epochs=10,
        learning_rate=1e-7,
        early_stopping_patience=2,
        imbalance="class_weight",
        label_smoothing=0.1,
    )

    result = train(config=stalled, data=data, workdir=tmp_path, hooks=hooks)

    assert result.stopped_early
    assert result.epochs_completed == 3
    assert result.best_epoch == 1
    assert hooks.logged("Early stopping after epoch 3")
    # scikit-learn's "balanced" weights: n / (k * count) = 42 / (3 * count).
    assert result.class_weight == pytest.approx({0: 42 / 72, 1: 42 / 36, 2: 42 / 18})
    assert read_state(tmp_path)["class_weight"] == pytest.approx(
        {"0": 42 / 72, "1": 42 / 36, "2": 42 / 18}
    )
    assert result.test_metrics is not None


def test_early_stopping_waits_for_phase_2_of_a_two_phase_run(tmp_path):
    hooks = RecordingHooks()
    # Stalled as above: no epoch after the first improves, so a patience of 1 would end the run
    # after epoch 2, in phase 1, before augmentation was ever used.
    stalled = config(
        architecture="blood_cnn_85",
        epochs=5,
        learning_rate=1e-7,
        early_stopping_patience=1,
        two_phase=True,
        phase1_epochs=2,
        augmentation={"enabled": True, "horizontal_flip": True},
    )

    result = train(config=stalled, data=synthetic_data(), workdir=tmp_path, hooks=hooks,
                   evaluate_test=False)

    # Phase 2's first epoch is the run's best from then on (a two-phase run keeps a phase-2
    # model), and patience counts from it.
    assert [entry["augmented"] for entry in result.history] == [False, False, True, True]
    assert result.stopped_early
    assert result.best_epoch == 3
    assert hooks.logged("Early stopping after epoch 4: val_accuracy has not improved for 1 "
                        "epoch(s) since epoch 3.")


@pytest.mark.slow
def test_a_frozen_backbone_is_unfrozen_on_schedule_also_across_a_resume(tmp_path, monkeypatch):
    # No ImageNet file in tests: the backbone starts from random weights, which exercises the
    # same freezing, unfreezing and recompiling.
    monkeypatch.setattr(fit_module, "resolve_pretrained_weights", lambda name, weights_dir: None)
    data = synthetic_data(train_counts=(8, 8), shape=(28, 28, 1))
    fine_tune = config(
        architecture="vgg16",
        pretrained=True,
        freeze_backbone_epochs=1,
        epochs=3,
        learning_rate=1e-3,
        batch_size=8,
    )
    crashing = RecordingHooks(crash_at=(2, 1))
    with pytest.raises(SimulatedCrash):
        train(config=fine_tune, data=data, workdir=tmp_path, hooks=crashing)
    assert crashing.logged("Backbone frozen for 1 epoch")
    assert read_state(tmp_path)["backbone_frozen"]
    frozen = keras.models.load_model(tmp_path / "last.keras")
    assert not frozen.get_layer("backbone_vgg16").trainable

    hooks = RecordingHooks()
    result = train(config=fine_tune, data=data, workdir=tmp_path, hooks=hooks, evaluate_test=False)

    assert hooks.begins == [{"total_epochs": 3, "resumed_from_epoch": 1}]
    assert hooks.logged("Epoch 2: backbone unfrozen")
    assert [entry["lr"] for entry in result.history] == pytest.approx([1e-3, 1e-4, 1e-4])
    assert not read_state(tmp_path)["backbone_frozen"]
    unfrozen = keras.models.load_model(tmp_path / "last.keras")
    assert unfrozen.get_layer("backbone_vgg16").trainable

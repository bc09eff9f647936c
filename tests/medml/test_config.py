import json

import pytest

from medml.config import (
    PRESETS,
    AugmentationConfig,
    ConfigError,
    TrainConfig,
    resolve_preset,
)

FULL_CONFIG = {
    "architecture": "compact_cnn",
    "epochs": 40,
    "batch_size": 64,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "momentum": 0.8,
    "schedule": "step",
    "warmup_epochs": 2,
    "weight_decay": 1e-4,
    "augmentation": {
        "enabled": True,
        "rotation_range": 15.0,
        "width_shift_range": 0.1,
        "height_shift_range": 0.1,
        "zoom_range": 0.1,
        "horizontal_flip": True,
        "vertical_flip": False,
        "rotate90": True,
        "brightness_range": 0.1,
        "contrast_range": 0.2,
        "featurewise_normalization": True,
    },
    "imbalance": "balanced_sampling",
    "label_smoothing": 0.1,
    "early_stopping_patience": 5,
    "monitor": "val_auc",
    "two_phase": True,
    "phase1_epochs": 10,
    "clean_final_epochs": 5,
    "pretrained": False,
    "freeze_backbone_epochs": 0,
    "dropout": 0.2,
    "seed": 7,
    "mixed_precision": True,
    "tta": True,
    "ensemble_size": 3,
}


def errors_of(data: dict) -> dict[str, list[str]]:
    with pytest.raises(ConfigError) as caught:
        TrainConfig.from_dict(data)
    return caught.value.errors


def test_defaults_round_trip_through_json():
    config = TrainConfig.from_dict({})

    assert config == TrainConfig()
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_full_config_round_trips_unchanged():
    config = TrainConfig.from_dict(FULL_CONFIG)

    assert config.to_dict() == FULL_CONFIG
    assert isinstance(config.augmentation, AugmentationConfig)
    assert config.augmentation.rotation_range == 15.0
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_augmentation_accepts_a_partial_dict_or_a_dataclass():
    from_dict = TrainConfig.from_dict({"augmentation": {"enabled": True, "rotate90": True}})
    from_object = TrainConfig.from_dict(
        {"augmentation": AugmentationConfig(enabled=True, rotate90=True)}
    )

    assert from_dict == from_object
    assert from_dict.augmentation.zoom_range == 0.0


def test_whole_number_floats_are_accepted_as_integers():
    config = TrainConfig.from_dict({"epochs": 12.0, "batch_size": 32})

    assert config.epochs == 12
    assert isinstance(config.epochs, int)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("epochs", 0),
        ("epochs", 1001),
        ("epochs", 2.5),
        ("epochs", "10"),
        ("epochs", True),
        ("epochs", None),
        ("batch_size", 0),
        ("batch_size", 4097),
        ("learning_rate", 0),
        ("learning_rate", 10.5),
        ("learning_rate", float("nan")),
        ("momentum", 1.0),
        ("weight_decay", 1.0),
        ("weight_decay", -0.1),
        ("label_smoothing", 0.5),
        ("optimizer", "rmsprop"),
        ("schedule", "linear"),
        ("imbalance", "oversample"),
        ("monitor", "accuracy"),
        ("two_phase", "yes"),
        ("pretrained", 1),
        ("early_stopping_patience", 0),
        ("dropout", 1.0),
        ("seed", -1),
        ("architecture", 3),
    ],
)
def test_it_reports_a_bad_value_under_its_field(field, value):
    errors = errors_of({field: value})

    assert list(errors) == [field]
    assert errors[field]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rotation_range", 361),
        ("rotation_range", -1),
        ("width_shift_range", 1.5),
        ("height_shift_range", -0.1),
        ("zoom_range", 2),
        ("brightness_range", 1.2),
        ("horizontal_flip", "true"),
    ],
)
def test_it_reports_a_bad_augmentation_value_under_its_dotted_name(field, value):
    errors = errors_of({"augmentation": {"enabled": True, field: value}})

    assert list(errors) == [f"augmentation.{field}"]


def test_it_reports_every_bad_field_at_once():
    errors = errors_of({"epochs": 0, "optimizer": "x", "augmentation": {"zoom_range": 5}})

    assert set(errors) == {"epochs", "optimizer", "augmentation.zoom_range"}


def test_it_rejects_unknown_fields_at_both_levels():
    errors = errors_of({"epoch": 3, "augmentation": {"shear_range": 0.2}})

    assert set(errors) == {"epoch", "augmentation.shear_range"}
    assert errors["epoch"] == ["Unknown field."]


def test_it_rejects_input_that_is_not_an_object():
    assert "__all__" in errors_of(["epochs", 3])
    assert "augmentation" in errors_of({"augmentation": "flips"})


def test_it_rejects_an_unknown_architecture():
    errors = errors_of({"architecture": "alexnet"})

    assert "compact_cnn" in errors["architecture"][0]


def test_it_rejects_pretrained_for_an_architecture_without_weights():
    errors = errors_of({"architecture": "compact_cnn", "pretrained": True})

    assert list(errors) == ["pretrained"]
    assert "resnet50" in errors["pretrained"][0]


def test_it_accepts_pretrained_with_a_frozen_backbone_for_resnet50():
    config = TrainConfig.from_dict(
        {"architecture": "resnet50", "pretrained": True, "freeze_backbone_epochs": 3}
    )

    assert config.backbone_freeze_epochs == 3


def test_freeze_epochs_must_leave_epochs_to_fine_tune():
    errors = errors_of(
        {"architecture": "vgg16", "pretrained": True, "epochs": 5, "freeze_backbone_epochs": 5}
    )

    assert list(errors) == ["freeze_backbone_epochs"]


def test_freeze_epochs_are_ignored_without_pretrained_weights():
    config = TrainConfig.from_dict({"epochs": 5, "freeze_backbone_epochs": 9})

    assert config.backbone_freeze_epochs == 0


def test_warmup_must_be_shorter_than_training():
    assert list(errors_of({"epochs": 3, "warmup_epochs": 3})) == ["warmup_epochs"]


@pytest.mark.parametrize("phase1_epochs", [0, 10, 12])
def test_two_phase_needs_a_phase_1_shorter_than_training(phase1_epochs):
    errors = errors_of(
        {
            "epochs": 10,
            "two_phase": True,
            "phase1_epochs": phase1_epochs,
            "augmentation": {"enabled": True, "horizontal_flip": True},
        }
    )

    assert list(errors) == ["phase1_epochs"]


def test_the_last_clean_epochs_train_without_the_random_transforms():
    config = TrainConfig.from_dict(
        {"epochs": 5, "clean_final_epochs": 2, "two_phase": True, "phase1_epochs": 1,
         "augmentation": {"enabled": True, "rotation_range": 20.0}}
    )

    assert [config.augmentation_active(epoch) for epoch in range(1, 6)] == [
        False, True, True, False, False,
    ]


@pytest.mark.parametrize(("extra", "clean"), [({}, 5), ({"two_phase": True, "phase1_epochs": 2}, 3)])
def test_clean_final_epochs_must_leave_an_augmented_epoch(extra, clean):
    errors = errors_of({"epochs": 5, "clean_final_epochs": clean, **extra,
                        "augmentation": {"enabled": True, "horizontal_flip": True}})

    assert list(errors) == ["clean_final_epochs"]
    assert "at least one augmented epoch" in errors["clean_final_epochs"][0]


def test_two_phase_needs_augmentation_for_phase_2():
    errors = errors_of({"epochs": 10, "two_phase": True, "phase1_epochs": 5})

    assert list(errors) == ["two_phase"]


def test_augmentation_is_active_only_in_phase_2_of_a_two_phase_run():
    config = TrainConfig.from_dict(
        {
            "epochs": 4,
            "two_phase": True,
            "phase1_epochs": 2,
            "augmentation": {"enabled": True, "vertical_flip": True},
        }
    )

    assert [config.augmentation_active(epoch) for epoch in (1, 2, 3, 4)] == [
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize(
    ("extra", "start"),
    [
        ({}, 1),
        ({"two_phase": True, "phase1_epochs": 4}, 5),
        ({"clean_final_epochs": 3}, 8),
        ({"two_phase": True, "phase1_epochs": 4, "clean_final_epochs": 2}, 9),
        ({"architecture": "vgg16", "pretrained": True, "freeze_backbone_epochs": 6}, 7),
        ({"architecture": "vgg16", "freeze_backbone_epochs": 6}, 1),  # ignored, not pretrained
        ({"two_phase": True, "phase1_epochs": 4, "architecture": "vgg16", "pretrained": True,
          "freeze_backbone_epochs": 2}, 5),
    ],
)
def test_early_stopping_counts_from_the_start_of_the_last_stage(extra, start):
    config = TrainConfig.from_dict(
        {"epochs": 10, "augmentation": {"enabled": True, "rotate90": True}, **extra}
    )

    assert config.early_stopping_from == start


def test_clean_final_epochs_without_augmentation_make_no_stage():
    config = TrainConfig.from_dict({"epochs": 10, "clean_final_epochs": 3})

    assert config.early_stopping_from == 1


def test_disabled_augmentation_keeps_its_settings_but_applies_nothing():
    config = TrainConfig.from_dict(
        {"augmentation": {"enabled": False, "rotate90": True, "featurewise_normalization": True}}
    )

    assert config.augmentation.rotate90
    assert not config.augmentation_active(1)
    assert not config.uses_featurewise_normalization


def test_config_error_is_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig.from_dict({"batch_size": -3})


def test_validate_checks_a_directly_built_config():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(epochs=0).validate()

    assert list(caught.value.errors) == ["epochs"]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_resolves_to_a_valid_config(name):
    preset = PRESETS[name]
    config = resolve_preset(name, {})

    assert config.architecture == preset.config["architecture"]
    assert preset.dataset_hint in (None, "bloodmnist", "breastmnist")
    assert preset.title
    assert preset.description
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_report_presets_carry_the_report_accuracy():
    report_presets = {name: p for name, p in PRESETS.items() if name.startswith("report_")}

    assert len(report_presets) == 6
    assert {p.report_accuracy for p in report_presets.values()} == {
        0.15,
        0.71,
        0.95,
        0.85,
        0.83,
        0.77,
    }


def test_report_breast_77_retrains_the_83_network_with_augmentation():
    without = resolve_preset("report_breast_cnn_83")
    retrained = resolve_preset("report_breast_cnn_77")

    assert retrained.architecture == without.architecture
    assert retrained.batch_size == without.batch_size  # phase 1 is the 83% run, full batches
    assert retrained.two_phase
    assert retrained.phase1_epochs == without.epochs
    assert not retrained.augmentation_active(retrained.phase1_epochs)
    assert retrained.augmentation_active(retrained.phase1_epochs + 1)


def test_overrides_replace_fields_and_merge_augmentation():
    config = resolve_preset(
        "fast_cpu_blood", {"epochs": 3, "augmentation": {"rotation_range": 10.0}}
    )

    assert config.epochs == 3
    assert config.augmentation.rotation_range == 10.0
    assert config.augmentation.rotate90  # kept from the preset


def test_overrides_are_validated_and_do_not_change_the_preset():
    with pytest.raises(ConfigError) as caught:
        resolve_preset("smoke", {"epochs": 0})

    assert list(caught.value.errors) == ["epochs"]
    assert resolve_preset("smoke").epochs == 2


def test_an_unknown_preset_is_reported_under_preset():
    with pytest.raises(ConfigError) as caught:
        resolve_preset("fastest", {})

    assert "smoke" in caught.value.errors["preset"][0]

"""Tests for medml.architectures: the registry and every model it builds."""

from __future__ import annotations

import functools
import time

import h5py
import keras
import numpy as np
import pytest

from medml.architectures import (
    ARCHITECTURES,
    WEIGHTS_DIR_ENV_VAR,
    PretrainedWeightsUnavailableError,
    UnknownArchitectureError,
    build_model,
    count_parameters,
    get_architecture,
    list_architectures,
    resolve_pretrained_weights,
    set_backbone_trainable,
)
from medml.architectures.preprocessing import image_input, preprocessing_block

EXPECTED_NAMES = {
    "resnet50",
    "vgg16",
    "blood_cnn_95",
    "blood_cnn_85",
    "breast_cnn",
    "resnet18_28",
    "compact_cnn",
    "compact_cnn_wide",
}
# keras.applications backbones: a few seconds each to build, so marked to be deselectable.
LARGE_ARCHITECTURES = {"resnet50", "vgg16"}
BLOOD = ((28, 28, 3), 8)
BREAST = ((28, 28, 1), 2)


def _arch_params(names=None):
    return [
        pytest.param(name, marks=pytest.mark.slow) if name in LARGE_ARCHITECTURES else name
        for name in (names or ARCHITECTURES)
    ]


@functools.cache
def _built(name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    # Models are only used for inference here, so each configuration is built once per session.
    return build_model(name, input_shape=input_shape, num_classes=num_classes)


def _random_images(input_shape, count=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, *input_shape), dtype=np.uint8)


def _layers_of(model, layer_type):
    return [layer for layer in model.layers if isinstance(layer, layer_type)]


# Registry


def test_registry_holds_exactly_the_platform_architectures():
    assert set(ARCHITECTURES) == EXPECTED_NAMES
    assert [spec.name for spec in list_architectures()] == list(ARCHITECTURES)


def test_every_spec_describes_its_model():
    for spec in list_architectures():
        assert spec.title and spec.description and spec.family and spec.default_input_hint
        assert callable(spec.builder)
        assert spec.min_size == 8
        assert (spec.pretrained_weights_file is not None) == spec.supports_pretrained
    assert {s.name for s in list_architectures() if s.supports_pretrained} == {"resnet50", "vgg16"}
    report_models = {"resnet50", "vgg16", "blood_cnn_95", "blood_cnn_85", "breast_cnn"}
    assert {s.name for s in list_architectures() if s.report_reference} == report_models
    assert "95%" in get_architecture("blood_cnn_95").report_reference


def test_unknown_name_raises_and_lists_the_valid_names():
    with pytest.raises(UnknownArchitectureError) as excinfo:
        get_architecture("resnet152")
    message = str(excinfo.value)
    assert "resnet152" in message
    for name in EXPECTED_NAMES:
        assert name in message
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(UnknownArchitectureError):
        build_model("resnet152", input_shape=(28, 28, 3), num_classes=8)


def test_spec_exposes_architecture_options_with_defaults():
    assert get_architecture("compact_cnn").options == {"width": 32}
    assert get_architecture("compact_cnn_wide").options == {"width": 64}
    assert get_architecture("resnet50").options == {"input_size": 100}
    assert get_architecture("vgg16").options == {"input_size": 32, "head_units": 256}
    assert get_architecture("blood_cnn_85").options == {}


# Every architecture: uint8 in, probabilities out


@pytest.mark.parametrize("name", _arch_params())
@pytest.mark.parametrize(("input_shape", "num_classes"), [BLOOD, BREAST], ids=["blood", "breast"])
def test_model_turns_raw_uint8_images_into_probabilities(name, input_shape, num_classes):
    model = _built(name, input_shape, num_classes)

    probabilities = np.asarray(model(_random_images(input_shape), training=False))

    assert model.input.dtype == "uint8"
    assert tuple(model.input.shape) == (None, *input_shape)
    assert probabilities.shape == (2, num_classes)
    assert probabilities.dtype == np.float32
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert model.layers[-1].name == "predictions"
    assert model.name == name


@pytest.mark.parametrize("name", _arch_params())
def test_every_layer_is_a_named_builtin_keras_layer(name):
    model = _built(name, *BREAST)
    for layer in model.layers:
        # Built-in layers only: saved models reload without importing this package.
        assert type(layer).__module__.startswith("keras."), layer
        assert not layer.name.startswith(type(layer).__name__.lower() + "_"), layer.name


@pytest.mark.parametrize("name", ["compact_cnn", "resnet18_28"])
def test_native_resolution_models_accept_larger_grayscale_images(name):
    model = build_model(name, input_shape=(64, 64, 1), num_classes=3)

    probabilities = np.asarray(model(_random_images((64, 64, 1)), training=False))

    assert probabilities.shape == (2, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["compact_cnn", "blood_cnn_95", "breast_cnn", "resnet18_28"])
def test_smallest_accepted_input_builds(name):
    model = build_model(name, input_shape=(8, 8, 3), num_classes=2)
    assert np.asarray(model(_random_images((8, 8, 3)), training=False)).shape == (2, 2)


@pytest.mark.slow
def test_vgg16_resizes_grayscale_to_32x32_rgb_inside_the_model():
    model = _built("vgg16", *BREAST)

    assert model.get_layer("grayscale_to_rgb")
    assert tuple(model.get_layer("backbone_vgg16").input.shape) == (None, 32, 32, 3)
    assert np.asarray(model(_random_images(BREAST[0]), training=False)).shape == (2, 2)


@pytest.mark.slow
def test_resnet50_resizes_to_100x100_inside_the_model():
    model = _built("resnet50", *BLOOD)

    assert model.get_layer("resize")
    assert tuple(model.get_layer("backbone_resnet50").input.shape) == (None, 100, 100, 3)


# Argument validation


@pytest.mark.parametrize(
    ("kwargs", "received"),
    [
        ({"num_classes": 1}, "num_classes=1"),
        ({"input_shape": (28, 28, 2)}, "input_shape=(28, 28, 2)"),
        ({"input_shape": (4, 28, 3)}, "input_shape=(4, 28, 3)"),
        ({"input_shape": (28, 7, 1)}, "input_shape=(28, 7, 1)"),
        ({"input_shape": (28, 28)}, "input_shape=(28, 28)"),
        ({"input_shape": (28.0, 28, 3)}, "input_shape=(28.0, 28, 3)"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"width": 0}, "width=0"),
        ({"depth": 3}, "depth"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_what_was_received(kwargs, received):
    arguments = {"input_shape": (28, 28, 3), "num_classes": 8, **kwargs}

    with pytest.raises(ValueError, match="Received") as excinfo:
        build_model("compact_cnn", **arguments)

    assert received in str(excinfo.value)


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES - LARGE_ARCHITECTURES))
def test_every_builder_validates_num_classes(name):
    with pytest.raises(ValueError, match="num_classes=1"):
        get_architecture(name).builder(input_shape=(28, 28, 3), num_classes=1)


@pytest.mark.parametrize(("name", "size"), [("resnet50", 31), ("vgg16", 16)])
def test_pretrained_backbones_refuse_an_input_size_below_32(name, size):
    with pytest.raises(ValueError, match=f"input_size={size}"):
        build_model(name, input_shape=(28, 28, 3), num_classes=8, input_size=size)


# Pretrained weights


@pytest.mark.parametrize(
    ("name", "file_name"),
    [
        ("resnet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
        ("vgg16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    ],
)
def test_missing_pretrained_weights_fail_fast_and_say_where_to_put_them(tmp_path, name, file_name):
    started = time.perf_counter()

    with pytest.raises(PretrainedWeightsUnavailableError) as excinfo:
        build_model(name, input_shape=(28, 28, 3), num_classes=8, pretrained_weights=tmp_path)

    assert time.perf_counter() - started < 1.0
    message = str(excinfo.value)
    assert WEIGHTS_DIR_ENV_VAR in message
    assert file_name in message
    assert isinstance(excinfo.value, FileNotFoundError)


def test_missing_pretrained_file_path_is_reported(tmp_path):
    missing = tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

    with pytest.raises(PretrainedWeightsUnavailableError, match=str(missing)):
        build_model("resnet50", input_shape=(28, 28, 3), num_classes=8, pretrained_weights=missing)


def test_resolve_pretrained_weights_finds_the_official_file(tmp_path, monkeypatch):
    with pytest.raises(PretrainedWeightsUnavailableError, match=WEIGHTS_DIR_ENV_VAR):
        resolve_pretrained_weights("vgg16", tmp_path)

    weights = tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    weights.write_bytes(b"")
    assert resolve_pretrained_weights("vgg16", tmp_path) == weights

    monkeypatch.setenv(WEIGHTS_DIR_ENV_VAR, str(tmp_path))
    assert resolve_pretrained_weights("vgg16") == weights


def test_pretrained_weights_for_a_from_scratch_model_raise_value_error(tmp_path):
    with pytest.raises(ValueError, match="compact_cnn") as excinfo:
        build_model(
            "compact_cnn", input_shape=(28, 28, 3), num_classes=8, pretrained_weights=tmp_path
        )
    assert not isinstance(excinfo.value, FileNotFoundError)
    with pytest.raises(ValueError, match="resnet50"):
        resolve_pretrained_weights("compact_cnn", tmp_path)


def _write_keras_notop_weights(model: keras.Model, path) -> None:
    """Write ``model``'s weights in the layout of the official Keras ImageNet ``.h5`` files."""
    with h5py.File(path, "w") as file:
        file.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        file.attrs["backend"] = b"tensorflow"
        file.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = file.create_group(layer.name)
            names = [f"{layer.name}/{w.name}_{i}" for i, w in enumerate(layer.weights)]
            group.attrs["weight_names"] = [name.encode() for name in names]
            for name, weight in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(weight))


@pytest.mark.slow
def test_pretrained_vgg16_matches_the_official_preprocessing_and_weights(tmp_path):
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    _write_keras_notop_weights(
        reference, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )
    model = build_model(
        "vgg16", input_shape=(32, 32, 3), num_classes=2, pretrained_weights=tmp_path
    )
    images = _random_images((32, 32, 3), seed=1)

    features = keras.Model(model.input, model.get_layer("avg_pool").input)(images)
    # The official pipeline: float pixels through preprocess_input (RGB -> BGR, minus means).
    expected = reference(keras.applications.vgg16.preprocess_input(images.astype("float32")))

    np.testing.assert_allclose(np.asarray(features), np.asarray(expected), rtol=1e-4, atol=1e-4)
    backbone = model.get_layer("backbone_vgg16")
    np.testing.assert_array_equal(
        backbone.get_layer("block5_conv3").get_weights()[0],
        reference.get_layer("block5_conv3").get_weights()[0],
    )


@pytest.mark.slow
def test_pretrained_batch_norm_statistics_stay_fixed_while_the_model_trains(tmp_path):
    reference = keras.applications.ResNet50(include_top=False, weights=None,
                                            input_shape=(32, 32, 3))
    _write_keras_notop_weights(
        reference, tmp_path / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    model = build_model("resnet50", input_shape=(32, 32, 3), num_classes=2,
                        pretrained_weights=tmp_path)
    norm = model.get_layer("backbone_resnet50").get_layer("conv1_bn")
    before = [np.asarray(w).copy() for w in norm.weights]
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.fit(_random_images((32, 32, 3), count=8, seed=2), np.array([0, 1] * 4), epochs=1,
              batch_size=8, verbose=0)
    for was, now in zip(before, norm.weights, strict=True):
        np.testing.assert_array_equal(was, np.asarray(now))  # gamma, beta and the statistics
    assert model.get_layer("backbone_resnet50").get_layer("conv1_conv").trainable


@pytest.mark.slow
def test_set_backbone_trainable_freezes_the_backbone_and_keeps_batch_norm_frozen():
    model = build_model("resnet50", input_shape=(28, 28, 3), num_classes=8)
    head_weights = 2  # predictions kernel and bias

    set_backbone_trainable(model, False)
    assert len(model.trainable_weights) == head_weights

    set_backbone_trainable(model, True)
    batch_norms = [
        layer
        for layer in model.get_layer("backbone_resnet50").layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert batch_norms
    assert not any(layer.trainable for layer in batch_norms)
    assert model.get_layer("backbone_resnet50").get_layer("conv1_conv").trainable

    set_backbone_trainable(model, True, train_batch_norm=True)
    assert all(layer.trainable for layer in batch_norms)


def test_set_backbone_trainable_refuses_a_model_without_backbone():
    model = _built("compact_cnn", *BLOOD)
    with pytest.raises(ValueError, match="backbone"):
        set_backbone_trainable(model, False)


# The report's architectures


def test_blood_cnn_95_is_sigmoid_throughout_with_786_and_512_unit_layers():
    model = _built("blood_cnn_95", *BLOOD)
    convs = _layers_of(model, keras.layers.Conv2D)
    dense = _layers_of(model, keras.layers.Dense)

    assert len(convs) == 3
    assert len(_layers_of(model, keras.layers.BatchNormalization)) == 3
    for conv in convs:
        next_layer = model.layers[model.layers.index(conv) + 1]
        assert isinstance(next_layer, keras.layers.BatchNormalization)
    assert [layer.units for layer in dense] == [786, 512, 8]
    for layer in [*convs, *dense[:-1]]:
        assert layer.activation is keras.activations.sigmoid, layer.name
    assert dense[-1].activation is keras.activations.softmax


def test_blood_cnn_85_is_one_relu_conv_a_pool_and_100_relu_units():
    model = _built("blood_cnn_85", *BLOOD)
    convs = _layers_of(model, keras.layers.Conv2D)
    dense = _layers_of(model, keras.layers.Dense)

    assert len(convs) == 1 and convs[0].activation is keras.activations.relu
    assert _layers_of(model, keras.layers.MaxPooling2D)[0].pool_size == (2, 2)
    assert [layer.units for layer in dense] == [100, 8]
    assert dense[0].activation is keras.activations.relu


def test_breast_cnn_has_l2_convs_and_three_batch_norms_with_momentum_0_1():
    model = _built("breast_cnn", *BREAST)
    convs = _layers_of(model, keras.layers.Conv2D)
    batch_norms = _layers_of(model, keras.layers.BatchNormalization)

    assert len(convs) == 3
    for conv in convs:
        assert isinstance(conv.kernel_regularizer, keras.regularizers.L2)
        assert conv.kernel_regularizer.l2 > 0
    assert len(batch_norms) == 3
    assert all(layer.momentum == pytest.approx(0.1) for layer in batch_norms)
    hidden_dense = _layers_of(model, keras.layers.Dense)[:-1]
    assert len(hidden_dense) == 3
    for dense in hidden_dense:
        assert isinstance(model.layers[model.layers.index(dense) + 1], type(batch_norms[0]))
    # The regularizers contribute to the loss.
    assert len(model.losses) == 3


# Platform architectures


def test_resnet18_28_keeps_resolution_in_its_stem():
    model = _built("resnet18_28", *BLOOD)
    first_conv = _layers_of(model, keras.layers.Conv2D)[0]

    assert not _layers_of(model, keras.layers.MaxPooling2D)
    assert first_conv.strides == (1, 1)
    assert first_conv.kernel_size == (3, 3)
    assert first_conv.filters == 64
    assert tuple(model.get_layer("avg_pool").input.shape) == (None, 4, 4, 512)
    assert len(_layers_of(model, keras.layers.Add)) == 8


def test_compact_cnn_width_sets_the_filters():
    narrow = _built("compact_cnn", *BLOOD)
    wide = _built("compact_cnn_wide", *BLOOD)

    filters = [conv.filters for conv in _layers_of(narrow, keras.layers.Conv2D)]
    assert filters == [32, 32, 64, 64, 128, 128]
    assert _layers_of(wide, keras.layers.Conv2D)[0].filters == 64
    assert count_parameters(wide) > 3 * count_parameters(narrow)
    custom = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=8, width=16)
    assert _layers_of(custom, keras.layers.Conv2D)[-1].filters == 64


def test_dropout_argument_overrides_the_default():
    assert _built("compact_cnn", *BLOOD).get_layer("head_dropout").rate == pytest.approx(0.3)
    model = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=8, dropout=0.0)
    assert "head_dropout" not in [layer.name for layer in model.layers]


def test_weight_decay_adds_l2_losses():
    model = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=8, weight_decay=1e-4)
    assert len(model.losses) == 7  # six convolutions and the output layer


def test_count_parameters_counts_trainable_and_frozen_weights():
    model = _built("compact_cnn", *BLOOD)
    expected = sum(int(np.prod(weight.shape)) for weight in model.weights)
    assert count_parameters(model) == expected
    assert count_parameters(model) > sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_predictions_stay_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=8)
    finally:
        keras.mixed_precision.set_global_policy("float32")

    probabilities = model(_random_images((28, 28, 3)), training=False)

    assert model.get_layer("stage1_conv1").compute_dtype == "float16"
    assert probabilities.dtype == "float32"
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-3)


# Preprocessing


def test_preprocessing_converts_rgb_to_grayscale_with_luminance_weights():
    inputs = image_input((8, 8, 3))
    model = keras.Model(inputs, preprocessing_block(inputs, target_channels=1))
    images = np.zeros((1, 8, 8, 3), dtype=np.uint8)
    images[..., 0] = 255

    gray = np.asarray(model(images))

    assert gray.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(gray, 0.299, rtol=1e-5)


def test_preprocessing_resizes_and_repeats_grayscale_for_imagenet_backbones():
    inputs = image_input((28, 28, 1))
    outputs = preprocessing_block(
        inputs, target_size=(32, 32), target_channels=3, mode="imagenet_caffe"
    )
    images = np.full((1, 28, 28, 1), 200, dtype=np.uint8)

    pixels = np.asarray(keras.Model(inputs, outputs)(images))

    assert pixels.shape == (1, 32, 32, 3)
    np.testing.assert_allclose(pixels[0, 0, 0], [200 - 123.68, 200 - 116.779, 200 - 103.939])


# Saving


@pytest.mark.parametrize("name", _arch_params())
def test_saved_model_reloads_with_identical_outputs(tmp_path, name):
    model = _built(name, *BREAST)
    images = _random_images(BREAST[0], count=4, seed=2)
    path = tmp_path / f"{name}.keras"

    model.save(path)
    reloaded = keras.models.load_model(path)

    np.testing.assert_array_equal(
        np.asarray(reloaded(images, training=False)), np.asarray(model(images, training=False))
    )
    assert reloaded.name == name

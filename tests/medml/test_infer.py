"""Serving a model (medml.infer) and explaining its predictions with Grad-CAM (medml.explain)."""

from __future__ import annotations

import io
import time

import keras
import numpy as np
import pytest
from PIL import Image

from medml import infer
from medml.architectures import build_model
from medml.explain import GradCam, colorize, find_target_layer, overlay, overlay_png
from medml.infer import InputStats, Predictor, answer_warnings, get_predictor

SHAPE = (28, 28, 3)


def images(count: int, shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, *shape), dtype=np.uint8)


@pytest.fixture(scope="module")
def compact_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_model("compact_cnn", input_shape=SHAPE, num_classes=4)


@pytest.fixture(scope="module")
def predictor(compact_model) -> Predictor:
    return Predictor(compact_model)


@pytest.fixture
def saved_models(tmp_path):
    """Two different compact CNNs saved as .keras files: [(path, sha256), ...]."""
    from medml.dataset_io import sha256_of

    result = []
    for seed in (2, 3):
        keras.utils.set_random_seed(seed)
        path = tmp_path / f"model-{seed}.keras"
        build_model("compact_cnn", input_shape=(28, 28, 1), num_classes=2, width=4).save(path)
        result.append((path, sha256_of(path)))
    return result


@pytest.fixture(autouse=True)
def empty_predictor_cache():
    infer.clear_predictor_cache()
    yield
    infer.clear_predictor_cache()


# --- Predictor -----------------------------------------------------------------------------------


def test_the_predictor_gives_exactly_what_the_model_gives(predictor, compact_model):
    x = images(5)
    np.testing.assert_array_equal(predictor.predict(x), compact_model(x, training=False).numpy())


def test_one_compiled_function_serves_every_batch_size(predictor):
    for count in (1, 3, 16, 2):
        probs = predictor.predict(images(count, seed=count))
        assert probs.shape == (count, 4)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # Traced once, at warm-up, for the batch dimension None.
    assert predictor._predict.experimental_get_tracing_count() == 1


def test_a_batch_gives_the_same_answers_as_its_images_one_by_one(predictor):
    x = images(6, seed=9)
    one_by_one = np.concatenate([predictor.predict(x[i:i + 1]) for i in range(6)])
    np.testing.assert_allclose(predictor.predict(x), one_by_one, atol=1e-6)


def test_the_predictor_refuses_images_of_the_wrong_size_or_type(predictor):
    with pytest.raises(ValueError, match=r"shape \(N, 28, 28, 3\). Received: shape=\(1, 32, 32, 3\)"):
        predictor.predict(images(1, shape=(32, 32, 3)))
    with pytest.raises(ValueError, match=r"must be uint8\. Received: dtype=float32"):
        predictor.predict(images(1).astype(np.float32))


def test_a_saved_model_is_loaded_once_per_sha256(saved_models):
    (path, sha256), _ = saved_models
    first = get_predictor(path, sha256)
    assert get_predictor(path, sha256) is first
    assert infer.cached_predictor(sha256) is first
    infer.clear_predictor_cache()
    assert infer.cached_predictor(sha256) is None
    assert get_predictor(path, sha256) is not first


def test_the_least_recently_used_model_leaves_the_cache_first(saved_models, monkeypatch):
    monkeypatch.setattr(infer._cache, "capacity", 1)
    (path_a, sha_a), (path_b, sha_b) = saved_models
    a = get_predictor(path_a, sha_a)
    get_predictor(path_b, sha_b)
    assert infer.cached_predictor(sha_a) is None
    assert get_predictor(path_a, sha_a) is not a


def test_loading_a_model_holds_up_neither_loaded_models_nor_loads_twice(saved_models, monkeypatch):
    import threading

    (path_a, sha_a), (path_b, sha_b) = saved_models
    b = get_predictor(path_b, sha_b)
    real, started, release, loads = Predictor.from_file, threading.Event(), threading.Event(), []

    def slow_load(path, **kwargs):  # stands for a first request converting a model to ONNX
        loads.append(path)
        started.set()
        assert release.wait(10)
        return real(path, **kwargs)

    monkeypatch.setattr(Predictor, "from_file", slow_load)
    results = []
    threads = [threading.Thread(target=lambda: results.append(get_predictor(path_a, sha_a)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    assert started.wait(10)
    # While A loads, B is served at once, from either entry point.
    assert infer.cached_predictor(sha_b) is b and get_predictor(path_b, sha_b) is b
    release.set()
    for thread in threads:
        thread.join(10)
    assert loads == [path_a] and len(results) == 3 and len({id(r) for r in results}) == 1


def test_a_loaded_model_predicts_like_the_one_that_was_saved(saved_models):
    path, sha256 = saved_models[0]
    saved = keras.models.load_model(path, compile=False)
    x = images(3, shape=(28, 28, 1))
    predictor = get_predictor(path, sha256)
    assert predictor.runtime == "onnxruntime"
    np.testing.assert_allclose(predictor.predict(x), saved(x, training=False).numpy(),
                               atol=infer.ONNX_PARITY_TOLERANCE)


def test_a_model_is_served_through_onnx_runtime_with_the_threads_asked(saved_models):
    path, sha256 = saved_models[0]
    predictor = get_predictor(path, sha256, threads=1)
    assert predictor.runtime == "onnxruntime", predictor.runtime_note
    assert predictor.threads == 1
    assert path.with_suffix(".onnx").is_file()  # kept for the next process
    # Another thread count is another session of the same model.
    assert get_predictor(path, sha256, threads=2) is not predictor
    assert infer.cached_predictor(sha256, threads=1) is predictor


def test_an_existing_onnx_file_is_reused_and_a_damaged_one_is_rebuilt(saved_models):
    path, _ = saved_models[0]
    Predictor.from_file(path)
    onnx_file = path.with_suffix(".onnx")
    converted_at = onnx_file.stat().st_mtime_ns
    Predictor.from_file(path)
    assert onnx_file.stat().st_mtime_ns == converted_at
    onnx_file.write_bytes(b"not an onnx model")
    predictor = Predictor.from_file(path)
    assert predictor.runtime == "onnxruntime"
    assert onnx_file.read_bytes() != b"not an onnx model"


def test_an_onnx_file_of_another_model_is_not_trusted(saved_models):
    (path_a, _), (path_b, _) = saved_models
    Predictor.from_file(path_b)
    path_b.with_suffix(".onnx").replace(path_a.with_suffix(".onnx"))  # a stale or swapped file
    predictor = Predictor.from_file(path_a)
    saved = keras.models.load_model(path_a, compile=False)
    x = images(4, shape=(28, 28, 1), seed=5)
    assert predictor.runtime == "onnxruntime"
    np.testing.assert_allclose(predictor.predict(x), saved(x, training=False).numpy(),
                               atol=infer.ONNX_PARITY_TOLERANCE)


def test_without_onnx_runtime_the_predictor_falls_back_to_tensorflow(saved_models, monkeypatch):
    path, _ = saved_models[0]
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import fails
    predictor = Predictor.from_file(path)
    assert predictor.runtime == "tensorflow"
    assert "onnxruntime is not installed" in predictor.runtime_note
    with pytest.raises(infer.OnnxUnavailableError, match="not installed"):
        Predictor.from_file(path, runtime="onnxruntime")
    saved = keras.models.load_model(path, compile=False)
    x = images(2, shape=(28, 28, 1))
    np.testing.assert_array_equal(predictor.predict(x), saved(x, training=False).numpy())


def test_onnx_and_tensorflow_agree_under_test_time_augmentation(saved_models):
    path, _ = saved_models[0]
    x = images(5, shape=(28, 28, 1), seed=3)
    onnx_result = Predictor.from_file(path).predict_tta(x)
    tf_result = Predictor.from_file(path, runtime="tensorflow").predict_tta(x)
    np.testing.assert_allclose(onnx_result.probabilities, tf_result.probabilities, atol=1e-4)
    np.testing.assert_allclose(onnx_result.spread, tf_result.spread, atol=1e-4)


def test_a_model_file_with_python_code_in_it_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Lambda(lambda t: t * 2)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(2, 3)(x))
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ValueError, match="Lambda"):
        Predictor.from_file(path)


# --- test-time augmentation ----------------------------------------------------------------------


def test_tta_averages_the_image_and_its_two_mirror_images(predictor, compact_model):
    x = images(3, seed=4)
    views = [x, x[:, :, ::-1], x[:, ::-1]]
    expected = np.mean([compact_model(v, training=False).numpy() for v in views], axis=0)
    result = predictor.predict_tta(x)
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    assert result.spread.shape == (3,)
    assert (result.spread > 0).all()  # random images look different to the model when mirrored


def test_tta_of_a_mirror_symmetric_image_has_no_spread(predictor):
    half = images(1, shape=(28, 14, 3), seed=6)
    quarter = np.concatenate([half, half[:, :, ::-1]], axis=2)[:, :14]
    symmetric = np.concatenate([quarter, quarter[:, ::-1]], axis=1)
    result = predictor.predict_tta(symmetric)
    np.testing.assert_allclose(result.probabilities, predictor.predict(symmetric), atol=1e-6)
    assert result.spread[0] == pytest.approx(0.0, abs=1e-6)


# --- unusual inputs ------------------------------------------------------------------------------


def training_like(count: int, channels: int, brightness: float, seed: int = 0) -> np.ndarray:
    """Images whose brightness varies from image to image, as in a real dataset, plus noise."""
    rng = np.random.default_rng(seed)
    per_image = rng.normal(brightness, 15, (count, 1, 1, channels))
    noise = rng.normal(0, 20, (count, 28, 28, channels))
    return np.clip(per_image + noise, 0, 255).astype(np.uint8)


def test_images_like_the_training_images_raise_no_intensity_warning():
    train = training_like(200, 3, 120)
    stats = InputStats.from_images(train)
    assert stats.count == 200
    assert stats.warnings(train[:20]) == [[]] * 20


def test_the_statistics_know_whether_the_training_images_are_in_colour():
    colour = training_like(50, 3, 120)
    grey_as_rgb = np.repeat(training_like(50, 1, 120), 3, axis=-1)
    assert InputStats.from_images(colour).colour is True
    assert InputStats.from_images(grey_as_rgb).colour is False
    assert InputStats.from_images(training_like(50, 1, 120)).colour is False


def test_a_much_brighter_image_than_the_training_images_is_flagged():
    train = training_like(200, 1, 80)
    stats = InputStats.from_images(train)
    bright = np.full((1, 28, 28, 1), 250, dtype=np.uint8)
    dark = np.full((1, 28, 28, 1), 75, dtype=np.uint8)
    [warnings] = stats.warnings(bright)
    assert len(warnings) == 1 and "much brighter than the training images" in warnings[0]
    assert stats.zscores(bright)[0, 0] > 8
    assert stats.warnings(dark) == [[]]


def test_the_intensity_warning_names_the_channel_that_is_off():
    train = training_like(100, 3, 128)
    image = np.full((1, 28, 28, 3), 128, dtype=np.uint8)
    image[..., 2] = 5
    [warnings] = InputStats.from_images(train).warnings(image)
    assert "darker in the blue channel" in warnings[0]


def test_intensity_statistics_refuse_images_with_another_number_of_channels():
    # They used to broadcast (N, 1) image means against three channels' statistics.
    stats = InputStats.from_images(training_like(50, 3, 120))
    with pytest.raises(ValueError, match="shape"):
        stats.zscores(np.full((1, 28, 28, 1), 120, dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        InputStats.from_images(training_like(50, 1, 120)).warnings(
            np.full((1, 28, 28, 3), 120, dtype=np.uint8))


def test_answer_warnings_flag_nan_probabilities():
    # A diverged model: NaN < 0.6 is False, so such answers used to pass without a word.
    probabilities = np.array([[np.nan, np.nan], [0.9, 0.1]], dtype=np.float32)
    warnings = answer_warnings(probabilities, np.array([0, 0]), ["a", "b"])

    assert list(warnings) == [0]
    assert len(warnings[0]) == 1 and "NaN" in warnings[0][0]


# --- Grad-CAM ------------------------------------------------------------------------------------


def test_gradcam_maps_have_the_input_size_and_values_between_0_and_1(predictor):
    maps = predictor.explainer.heatmaps(images(3), [0, 1, 2])
    assert maps.shape == (3, 28, 28)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert maps.max() == pytest.approx(1.0)  # each map is scaled to its peak


def test_gradcam_maps_differ_between_classes(predictor):
    x = images(1, seed=7)
    maps = [predictor.explainer.heatmaps(x, [c])[0] for c in range(4)]
    for a in range(4):
        for b in range(a + 1, 4):
            assert not np.allclose(maps[a], maps[b]), (a, b)


def test_gradcam_lights_up_where_the_evidence_for_a_class_is():
    # One 1x1 convolution copying the pixel value, averaged, and a head where bright means
    # class 0 and dark means class 1: the evidence for class 0 is exactly the bright square.
    inputs = keras.Input((28, 28, 1), dtype="uint8", name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    head = keras.layers.Dense(2, activation="softmax", name="predictions")
    outputs = head(x)
    model = keras.Model(inputs, outputs)
    head.set_weights([np.array([[4.0, -4.0]], dtype=np.float32), np.zeros(2, dtype=np.float32)])
    image = np.zeros((1, 28, 28, 1), dtype=np.uint8)
    image[0, 2:10, 16:24] = 255
    cam = GradCam(model)
    bright = cam.heatmaps(image, [0])[0]
    assert bright[2:10, 16:24].min() == pytest.approx(1.0)
    assert bright[14:, :12].max() == pytest.approx(0.0)
    # Nothing in the image argues for class 1: its map is empty, not noise scaled up.
    assert cam.heatmaps(image, [1])[0].max() == 0.0


@pytest.mark.parametrize(("name", "channels", "layer"), [
    ("compact_cnn", 3, "stage3_conv2"),
    ("compact_cnn_wide", 1, "stage3_conv2"),
    ("blood_cnn_85", 3, "conv1"),
    ("blood_cnn_95", 3, "conv3"),
    ("breast_cnn", 1, "conv3"),
    ("resnet18_28", 3, "stage4_block2_conv2"),
    pytest.param("vgg16", 1, "backbone_vgg16", marks=pytest.mark.slow),
    pytest.param("resnet50", 3, "backbone_resnet50", marks=pytest.mark.slow),
])
def test_gradcam_works_on_every_registry_architecture(name, channels, layer):
    model = build_model(name, input_shape=(28, 28, channels), num_classes=3)
    assert find_target_layer(model).name == layer
    maps = GradCam(model).heatmaps(images(2, shape=(28, 28, channels)), [0, 2])
    assert maps.shape == (2, 28, 28)
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0


def test_gradcam_works_on_a_model_loaded_from_its_file(saved_models):
    path, sha256 = saved_models[0]
    maps = get_predictor(path, sha256).explainer.heatmaps(images(1, shape=(28, 28, 1)), [1])
    assert maps.shape == (1, 28, 28)
    assert maps.max() <= 1.0


def test_gradcam_refuses_a_class_the_model_does_not_have(predictor):
    with pytest.raises(ValueError, match=r"classes must be in \[0, 4\). Received: classes=\[4\]"):
        predictor.explainer.heatmaps(images(1), [4])


def test_gradcam_and_its_overlay_take_under_50_ms_for_one_image(predictor):
    x = images(1, seed=11)
    explainer = predictor.explainer
    explainer.heatmaps(x, [0])  # warm-up: the compiled function is traced once
    durations = []
    for _ in range(15):
        started = time.perf_counter()
        overlay_png(x[0], explainer.heatmaps(x, [1])[0])
        durations.append(time.perf_counter() - started)
    assert 1000 * float(np.median(durations)) < 50
    assert explainer._compute.experimental_get_tracing_count() == 1


def test_the_overlay_is_an_enlarged_rgb_png_coloured_by_the_map():
    image = np.full((28, 28, 1), 128, dtype=np.uint8)
    heatmap = np.zeros((28, 28), dtype=np.float32)
    heatmap[:, 14:] = 1.0
    decoded = Image.open(io.BytesIO(overlay_png(image, heatmap, scale=8)))
    assert decoded.format == "PNG" and decoded.mode == "RGB" and decoded.size == (224, 224)
    pixels = np.asarray(decoded).astype(int)
    left, right = pixels[100, 10], pixels[100, 214]
    assert left[2] > left[0]  # low attention: blue
    assert right[0] > right[2]  # high attention: red
    np.testing.assert_array_equal(np.asarray(decoded), overlay(image, heatmap, scale=8))


def test_the_colour_map_runs_from_dark_blue_to_dark_red():
    low, middle, high = colorize(np.array([0.0, 0.5, 1.0]))
    assert low.tolist() == [48, 18, 59]
    assert high.tolist() == [122, 4, 3]
    assert middle[1] > 200  # green-yellow in the middle


@pytest.mark.parametrize(("side", "shown"), [(28, 224), (64, 256), (128, 256), (224, 224)])
def test_the_overlay_is_enlarged_to_about_224_pixels_whatever_the_dataset_size(side, shown):
    # 8 times for every size would answer a 224x224 dataset with 1792x1792 PNGs of megabytes.
    image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    heatmap = np.linspace(0, 1, side * side, dtype=np.float32).reshape(side, side)
    decoded = Image.open(io.BytesIO(overlay_png(image, heatmap)))
    assert decoded.size == (shown, shown)
    if side == 224:
        np.testing.assert_array_equal(np.asarray(decoded), overlay(image, heatmap, scale=1))

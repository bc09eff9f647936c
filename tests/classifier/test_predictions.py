"""Classifying images through the API and the pages: results, history, isolation, bad input."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
from pathlib import Path

import keras
import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from PIL import Image
from rest_framework.test import APIClient

from classifier import selectors, services, services_predict
from classifier.models import Dataset, ModelAlias, ModelVersion, Prediction, Visibility
from medml import infer
from medml.architectures import build_model
from medml.images import parse_crop, resampling_filter
from tests.factories import (
    PASSWORD,
    TINY_CLASS_COUNTS,
    TINY_CLASS_NAMES,
    DatasetFactory,
    UserFactory,
    medmnist_arrays,
    save_tiny_trained_model,
)

pytestmark = pytest.mark.django_db

URL = "/api/v1/predictions/"
BLOOD_PREPROCESSING = services.MEDMNIST_PREPROCESSING["bloodmnist"]


@pytest.fixture(scope="module")
def dataset_arrays() -> dict[str, np.ndarray]:
    """The arrays ``DatasetFactory()`` imports (same counts, size, channels and seed)."""
    return medmnist_arrays(TINY_CLASS_COUNTS)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory, dataset_arrays) -> Path:
    """A small compact CNN trained for one epoch on the tiny dataset, saved as .keras."""
    return save_tiny_trained_model(dataset_arrays, tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture(scope="module")
def reference_model(model_file) -> keras.Model:
    """The same artifact loaded independently of the serving code."""
    return keras.models.load_model(model_file, compile=False)


@pytest.fixture(autouse=True)
def isolated_model_cache(tmp_path, settings):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    yield
    infer.clear_predictor_cache()


@pytest.fixture
def owner():
    return UserFactory(username="paula")


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood")


@pytest.fixture
def register(model_file):
    def register(dataset, owner, *, name="tiny-cnn", val_accuracy=None,
                 visibility=Visibility.PRIVATE) -> ModelVersion:
        model = services.model_version_register(
            name=name, architecture="compact_cnn", dataset=dataset, owner=owner,
            artifact_path=model_file, config={"width": 8},
            val_metrics={"accuracy": val_accuracy} if val_accuracy is not None else {},
        )
        if visibility != model.visibility:
            ModelVersion.objects.filter(pk=model.pk).update(visibility=visibility)
            model.refresh_from_db()
        return model

    return register


@pytest.fixture
def model(dataset, owner, register):
    return register(dataset, owner)


@pytest.fixture
def client(owner) -> APIClient:
    api = APIClient()
    api.force_authenticate(owner)
    return api


def png(array: np.ndarray, name: str = "cell.png") -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = name
    return buffer


def upload(name: str, data: bytes) -> io.BytesIO:
    buffer = io.BytesIO(data)
    buffer.name = name
    return buffer


def post(client, images, **fields):
    return client.post(URL, {"images": images, **fields}, format="multipart")


def stored_uploads(media_root: Path) -> list[Path]:
    folder = Path(media_root) / "uploads"
    return sorted(folder.iterdir()) if folder.exists() else []


# --- classifying ---------------------------------------------------------------------------------


def test_a_user_classifies_an_image_and_gets_probabilities_a_heatmap_and_a_stored_record(
    client, model, owner, dataset_arrays, media_root
):
    image = dataset_arrays["test_images"][0]
    response = post(client, [png(image, "first.png")], model=model.pk)

    assert response.status_code == 201, response.json()
    [result] = response.json()
    assert set(result["probabilities"]) == set(TINY_CLASS_NAMES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    best = max(result["probabilities"], key=result["probabilities"].get)
    assert result["predicted_label"] == best
    assert result["predicted_index"] == TINY_CLASS_NAMES.index(best)
    assert result["model"]["id"] == model.pk
    assert (result["model"]["name"], result["model"]["version"]) == ("tiny-cnn", 1)
    assert result["model"]["class_names"] == TINY_CLASS_NAMES
    assert result["latency_ms"] > 0
    assert result["uncertainty"] is None
    assert result["original_name"] == "first.png"
    assert result["gradcam"].startswith("data:image/png;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(result["gradcam"].split(",", 1)[1])))
    assert overlay.format == "PNG" and overlay.size == (224, 224)

    row = Prediction.objects.get(pk=result["id"])
    assert row.owner == owner and row.model_version == model
    assert row.probabilities == result["probabilities"]
    assert row.image_content_type == "image/png"
    [stored] = stored_uploads(media_root)
    assert stored.read_bytes() == png(image).getvalue()
    assert row.image_sha256 == hashlib.sha256(stored.read_bytes()).hexdigest()


def test_a_dataset_image_uploaded_as_png_is_classified_exactly_like_its_array(
    client, model, dataset_arrays, reference_model
):
    image = dataset_arrays["test_images"][3]

    [result] = post(client, [png(image)], model=model.pk).json()

    # Exactly what the serving runtime gives for the array, and what Keras gives to within the
    # runtime's parity tolerance.
    served = services_predict.predictor_for(model)
    assert served.runtime == "onnxruntime", served.runtime_note
    expected = served.predict(image[np.newaxis])[0]
    assert [result["probabilities"][name] for name in TINY_CLASS_NAMES] == expected.tolist()
    keras_probabilities = reference_model(image[np.newaxis], training=False).numpy()[0]
    np.testing.assert_allclose(expected, keras_probabilities, atol=infer.ONNX_PARITY_TOLERANCE)
    assert result["predicted_index"] == int(np.argmax(expected))
    # Nothing about the image; about the answer, only whether this tiny model is unsure.
    top = int(np.argmax(expected))
    assert result["warnings"] == ([] if expected[top] >= 0.6 else [
        f"low confidence: {TINY_CLASS_NAMES[top]} has a probability of {expected[top]:.2f}, "
        "below 0.60"])


def test_several_images_are_classified_in_one_request_in_upload_order(
    client, model, dataset_arrays, reference_model
):
    images = dataset_arrays["test_images"][:4]
    expected = reference_model(images, training=False).numpy()

    response = post(client, [png(img, f"img{i}.png") for i, img in enumerate(images)], model=model.pk)

    assert response.status_code == 201
    results = response.json()
    assert [r["original_name"] for r in results] == ["img0.png", "img1.png", "img2.png", "img3.png"]
    for result, row in zip(results, expected, strict=True):
        got = [result["probabilities"][name] for name in TINY_CLASS_NAMES]
        np.testing.assert_allclose(got, row, atol=infer.ONNX_PARITY_TOLERANCE)
        assert result["gradcam"]
    assert Prediction.objects.count() == 4


def test_a_large_image_follows_the_datasets_source_crop_and_resize(
    client, model, dataset, reference_model
):
    Dataset.objects.filter(pk=dataset.pk).update(source_preprocessing=BLOOD_PREPROCESSING)
    source = np.random.default_rng(1).integers(0, 256, (363, 360, 3), dtype=np.uint8)
    expected_input = np.asarray(
        Image.fromarray(source).crop((80, 81, 280, 281)).resize((28, 28), Image.Resampling.BILINEAR)
    )
    expected = reference_model(expected_input[np.newaxis], training=False).numpy()[0]

    [result] = post(client, [png(source, "microscope.png")], model=model.pk).json()

    np.testing.assert_allclose(
        [result["probabilities"][name] for name in TINY_CLASS_NAMES], expected,
        atol=infer.ONNX_PARITY_TOLERANCE,
    )


def test_a_grayscale_image_for_a_colour_model_comes_back_with_a_warning(client, model):
    gray = np.random.default_rng(2).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    [result] = post(client, [png(gray)], model=model.pk).json()
    assert any("grayscale image was given to a colour model" in w for w in result["warnings"])
    assert Prediction.objects.get().warnings == result["warnings"]


def test_an_image_unlike_the_training_images_is_flagged(client, model):
    white = np.full((28, 28, 3), 255, dtype=np.uint8)
    [result] = post(client, [png(white)], model=model.pk).json()
    assert any("much brighter" in w for w in result["warnings"])


def test_test_time_augmentation_reports_an_uncertainty(client, model, dataset_arrays):
    [result] = post(client, [png(dataset_arrays["test_images"][1])], model=model.pk, tta="true").json()
    assert isinstance(result["uncertainty"], float)
    assert 0 <= result["uncertainty"] <= 1
    assert Prediction.objects.get().uncertainty == result["uncertainty"]


def test_answers_that_are_unsure_or_change_under_mirroring_carry_warnings(
        client, model, dataset_arrays, monkeypatch, settings):
    # The views of test-time augmentation: the image and its two mirror images.
    views = np.array([[[0.50, 0.30, 0.20]], [[0.20, 0.70, 0.10]], [[0.80, 0.10, 0.10]]],
                     dtype=np.float32)
    monkeypatch.setattr(infer.Predictor, "predict_tta", lambda self, images: infer.TTAResult(
        views.mean(axis=0), np.array([0.25], dtype=np.float32), views))
    [result] = post(client, [png(dataset_arrays["test_images"][1])], model=model.pk,
                    tta="true").json()
    assert result["predicted_label"] == "adenoma"  # mean 0.5, 0.367, 0.133
    assert result["warnings"] == [
        "low confidence: adenoma has a probability of 0.50, below 0.60",
        "test-time augmentation disagrees: 1 of 3 views (the image and its mirror images) "
        "predict carcinoma"]
    assert Prediction.objects.get().warnings == result["warnings"]

    settings.PREDICTION_LOW_CONFIDENCE = 0.5  # the floor is a setting
    [result] = post(client, [png(dataset_arrays["test_images"][1])], model=model.pk,
                    tta="true").json()
    assert [w.split(":")[0] for w in result["warnings"]] == ["test-time augmentation disagrees"]


def test_answer_warnings_follow_the_answered_class_not_the_most_probable_one():
    names = ["malignant", "benign"]
    probabilities = np.array([[0.7, 0.3], [0.95, 0.05], [0.2, 0.8]])
    # A decision threshold of 0.25 on class 1 answers "benign" for the first row.
    predicted = np.array([1, 0, 1])
    views = np.array([[1, 0, 1], [1, 0, 1], [1, 0, 0]])
    assert infer.answer_warnings(probabilities, predicted, names, view_predictions=views) == {
        0: ["low confidence: benign has a probability of 0.30, below 0.60"],
        2: ["test-time augmentation disagrees: 1 of 3 views (the image and its mirror images) "
            "predict malignant"]}
    assert infer.answer_warnings(probabilities, predicted, names, min_confidence=0.1) == {}


def test_a_model_trained_with_test_time_augmentation_always_serves_with_it(
        client, dataset, owner, register, model_file, dataset_arrays):
    tta_model = register(dataset, owner, name="tiny-tta")
    tta_model.config = {**tta_model.config, "tta": True}
    tta_model.save(update_fields=["config"])
    image = dataset_arrays["test_images"][1]
    [result] = post(client, [png(image)], model=tta_model.pk).json()  # no tta asked for
    predictor = infer.Predictor.from_file(model_file, runtime="onnxruntime", threads=1)
    expected = predictor.predict_tta(image[np.newaxis]).probabilities[0]
    np.testing.assert_allclose(list(result["probabilities"].values()), expected, atol=1e-5)
    assert isinstance(result["uncertainty"], float)


def test_a_two_class_model_applies_its_decision_threshold(owner, client, tmp_path):
    binary = DatasetFactory(owner=owner, class_counts={"train": [6, 6], "val": [2, 2], "test": [2, 2]},
                            class_names=["malignant", "benign"])
    keras.utils.set_random_seed(0)
    path = tmp_path / "binary.keras"
    build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=2, width=4).save(path)
    model = services.model_version_register(
        name="binary", architecture="compact_cnn", dataset=binary, owner=owner,
        artifact_path=path, config={},
    )
    image = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    [free] = post(client, [png(image)], model=model.pk).json()
    benign = free["probabilities"]["benign"]
    # A threshold just above / below the probability of class 1 decides the label.
    model.decision_threshold = benign + 1e-4
    model.save(update_fields=["decision_threshold"])
    assert post(client, [png(image)], model=model.pk).json()[0]["predicted_label"] == "malignant"
    model.decision_threshold = benign - 1e-4
    model.save(update_fields=["decision_threshold"])
    assert post(client, [png(image)], model=model.pk).json()[0]["predicted_label"] == "benign"


# --- choosing the model --------------------------------------------------------------------------


def test_the_dataset_default_is_the_visible_model_with_the_best_validation_accuracy(
    client, owner, dataset, register
):
    register(dataset, owner, name="weak", val_accuracy=0.61)
    best_visible = register(dataset, owner, name="strong", val_accuracy=0.83)
    register(dataset, owner, name="unscored")
    stranger = UserFactory(username="quentin")
    register(dataset, stranger, name="hidden-best", val_accuracy=0.99)

    assert selectors.default_model_for(dataset=dataset, user=owner) == best_visible
    [result] = post(client, [png(np.zeros((28, 28, 3), np.uint8))], dataset=dataset.pk).json()
    assert result["model"]["name"] == "strong"


def test_the_datasets_production_model_is_the_default_when_you_may_see_it(
    client, owner, dataset, register
):
    best = register(dataset, owner, name="best", val_accuracy=0.95)
    chosen = register(dataset, owner, name="chosen", val_accuracy=0.80)
    alias = ModelAlias.objects.create(dataset=dataset, name="production", model_version=chosen)
    assert selectors.default_model_for(dataset=dataset, user=owner) == chosen
    [result] = post(client, [png(np.zeros((28, 28, 3), np.uint8))], dataset=dataset.pk).json()
    assert result["model"]["name"] == "chosen"

    # A production model the user may not see is not served to them; the best visible one is.
    stranger = UserFactory(username="ursula")
    hidden = register(dataset, stranger, name="hidden")
    ModelAlias.objects.filter(pk=alias.pk).update(model_version=hidden)
    assert selectors.default_model_for(dataset=dataset, user=owner) == best


def test_a_public_model_of_a_built_in_dataset_is_everyones_default(register, owner):
    builtin = DatasetFactory(builtin=True, name="Built-in blood")
    staff = UserFactory(username="sam", staff=True)
    public = register(builtin, staff, name="public", val_accuracy=0.7, visibility=Visibility.PUBLIC)
    assert selectors.default_model_for(dataset=builtin, user=owner) == public


def test_a_dataset_without_a_usable_model_is_refused(client, owner):
    empty = DatasetFactory(owner=owner, name="No models")
    response = post(client, [png(np.zeros((28, 28, 3), np.uint8))], dataset=empty.pk)
    assert response.status_code == 400
    assert response.json() == {"dataset": ["No models has no model you can use yet"]}


def test_a_model_of_another_dataset_than_the_one_named_is_refused(client, model, owner):
    other = DatasetFactory(owner=owner)
    response = post(client, [png(np.zeros((28, 28, 3), np.uint8))], model=model.pk, dataset=other.pk)
    assert response.status_code == 400
    assert "was not trained on dataset" in response.json()["model"][0]


# --- bad input: 400 with a reason, nothing stored ------------------------------------------------


def good_png() -> io.BytesIO:
    return png(np.zeros((28, 28, 3), np.uint8), "good.png")


def truncated_png() -> io.BytesIO:
    data = png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).getvalue()
    return upload("cut.png", data[: len(data) // 2])


def bomb_png() -> io.BytesIO:
    # 8000 x 8000 pixels in a ~60 KB file.
    return png(np.zeros((8000, 8000, 1), np.uint8), "bomb.png")


@pytest.mark.parametrize(("files", "reason"), [
    (lambda: [upload("notes.png", b"just some text")], "notes.png: not a PNG, JPEG, BMP or TIFF image"),
    (lambda: [truncated_png()], "cut.png: the image is damaged or truncated"),
    (lambda: [bomb_png()], "bomb.png: the image is 8000x8000 = 64000000 pixels; the limit is"),
    (lambda: [upload("empty.png", b"")], "empty.png: the file is empty"),
    (lambda: [good_png(), upload("second.gif", b"GIF89a" + b"\0" * 32)],
     "second.gif: not a PNG, JPEG, BMP or TIFF image"),
    (lambda: [good_png() for _ in range(3)], "3 images were uploaded; at most 2 are accepted at once"),
], ids=["not-an-image", "truncated", "bomb", "empty", "one-bad-among-good", "too-many-files"])
def test_bad_uploads_are_refused_with_the_reason_and_nothing_is_stored(
    client, model, media_root, settings, files, reason
):
    settings.PREDICTION_MAX_FILES = 2
    response = post(client, files(), model=model.pk)
    assert response.status_code == 400
    assert any(message.startswith(reason) for message in response.json()["images"]), response.json()
    assert Prediction.objects.count() == 0
    assert stored_uploads(media_root) == []


def test_a_file_over_the_size_limit_is_refused(client, model, media_root, settings):
    settings.PREDICTION_MAX_BYTES = 1000
    noisy = png(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), "big.png")
    response = post(client, [noisy], model=model.pk)
    assert response.status_code == 400
    assert "'big.png' is larger than the limit of 1000 bytes" in response.json()["images"][0]
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_a_file_over_the_size_limit_is_stopped_before_it_reaches_the_disk(
        client, model, media_root, settings, spooled_uploads):
    temp_dir, spooled = spooled_uploads
    settings.PREDICTION_MAX_BYTES = 64 * 1024
    small = good_png()
    huge = upload("huge.png", small.getvalue() + b"\0" * (2 * 1024 * 1024))

    response = post(client, [good_png(), huge], model=model.pk)

    assert response.status_code == 400
    assert "'huge.png' is larger than the limit of 65536 bytes" in response.json()["images"][0]
    # The limit is per file: the first file passes whole, the second stops at the limit.
    assert sum(spooled) <= 2 * settings.PREDICTION_MAX_BYTES
    assert list(temp_dir.iterdir()) == []
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_files_each_under_the_size_limit_pass_whatever_their_total(client, model, settings):
    settings.PREDICTION_MAX_BYTES = len(good_png().getvalue())
    assert post(client, [good_png(), good_png(), good_png()], model=model.pk).status_code == 201


def test_more_files_than_django_takes_are_refused_with_this_endpoints_limit(
    client, model, media_root, settings
):
    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 5  # past it, the form is not even parsed
    settings.PREDICTION_MAX_FILES = 3
    response = post(client, [good_png() for _ in range(6)], model=model.pk)
    assert response.status_code == 400
    # Not Django's limit of 5: the user would send 5, to be told then that 3 is the most.
    assert response.json() == {
        "images": ["too many files were uploaded; at most 3 are accepted at once"]}
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_every_bad_file_of_a_request_is_reported_at_once(client, model):
    response = post(client, [upload("a.png", b""), good_png(), upload("b.png", b"xx")], model=model.pk)
    assert response.status_code == 400
    messages = response.json()["images"]
    assert [m.split(":")[0] for m in messages] == ["a.png", "b.png"]


def test_a_request_without_images_is_refused(client, model):
    response = client.post(URL, {"model": model.pk}, format="multipart")
    assert response.status_code == 400
    assert response.json() == {"images": ["upload at least one image"]}


def test_a_request_without_a_model_or_dataset_is_refused(client, model):
    response = post(client, [good_png()])
    assert response.status_code == 400
    assert "choose a model" in response.json()["model"][0]


@pytest.mark.parametrize("whose", ["unknown", "another user's private"])
def test_an_unknown_or_invisible_model_is_refused_the_same_way(client, dataset, register, whose,
                                                                media_root):
    if whose == "unknown":
        model_id = 99999
    else:
        stranger = UserFactory(username="rita")
        model_id = register(DatasetFactory(owner=stranger), stranger, name="theirs").pk
    response = post(client, [good_png()], model=model_id)
    assert response.status_code == 400
    assert response.json() == {"model": [f"model {model_id} does not exist or is not visible to you"]}
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_a_tampered_model_artifact_is_refused_and_nothing_is_stored(client, model, media_root):
    artifact = Path(media_root) / model.artifact.name
    artifact.write_bytes(artifact.read_bytes() + b"tampered")
    infer.clear_predictor_cache()  # as in a freshly started server

    response = post(client, [good_png()], model=model.pk)

    assert response.status_code == 409
    assert "refusing to load it" in response.json()["detail"]
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_a_model_that_does_not_take_its_datasets_images_is_refused(client, dataset, owner, tmp_path,
                                                                   media_root):
    path = tmp_path / "grayscale.keras"
    build_model("compact_cnn", input_shape=(28, 28, 1), num_classes=3, width=4).save(path)
    mismatched = services.model_version_register(
        name="grayscale", architecture="compact_cnn", dataset=dataset, owner=owner,
        artifact_path=path, config={},
    )
    response = post(client, [good_png()], model=mismatched.pk)
    assert response.status_code == 409
    assert "takes (28, 28, 1) images with 3 classes" in response.json()["detail"]
    assert Prediction.objects.count() == 0 and stored_uploads(media_root) == []


def test_anonymous_requests_are_refused(model):
    response = APIClient().post(URL, {"images": [good_png()], "model": model.pk}, format="multipart")
    assert response.status_code == 401
    assert Prediction.objects.count() == 0


# --- history, isolation, the stored image --------------------------------------------------------


@pytest.fixture
def history(client, model, owner, dataset_arrays):
    """Three predictions of the owner and one of a stranger on a public model."""
    images = dataset_arrays["test_images"]
    results = post(client, [png(images[i], f"h{i}.png") for i in range(3)], model=model.pk).json()
    stranger = UserFactory(username="stan")
    model.visibility = Visibility.PUBLIC
    model.save(update_fields=["visibility"])
    theirs = APIClient()
    theirs.force_authenticate(stranger)
    [their_result] = post(theirs, [png(images[5], "theirs.png")], model=model.pk).json()
    return {"mine": results, "theirs": their_result, "stranger_client": theirs}


def relabel(history) -> None:
    """Give the owner's three predictions three different labels (and the stranger's the last)."""
    for result, label in zip(history["mine"], TINY_CLASS_NAMES, strict=True):
        Prediction.objects.filter(pk=result["id"]).update(predicted_label=label)
    Prediction.objects.filter(pk=history["theirs"]["id"]).update(predicted_label="carcinoma")


def test_the_history_lists_only_your_own_predictions_newest_first(client, history):
    listed = client.get(URL).json()
    assert listed["count"] == 3
    assert [r["id"] for r in listed["results"]] == [r["id"] for r in reversed(history["mine"])]
    assert all(r["gradcam"] is None for r in listed["results"])  # only in the creating response
    assert history["stranger_client"].get(URL).json()["count"] == 1


def test_other_users_predictions_are_not_found(client, history):
    their_id = history["theirs"]["id"]
    assert client.get(f"{URL}{their_id}/").status_code == 404
    assert client.get(f"{URL}{their_id}/image/").status_code == 404
    assert client.delete(f"{URL}{their_id}/").status_code == 404
    assert Prediction.objects.filter(pk=their_id).exists()


def test_the_history_filters_by_model_dataset_label_and_day(client, history, model, owner, register):
    other_model = register(DatasetFactory(owner=owner), owner, name="other")
    post(client, [good_png()], model=other_model.pk)
    mine = history["mine"]

    def ids(**params):
        return sorted(r["id"] for r in client.get(URL, params).json()["results"])

    assert ids(model=model.pk) == sorted(r["id"] for r in mine)
    assert ids(dataset=model.dataset_id) == sorted(r["id"] for r in mine)
    relabel(history)
    assert ids(label="carcinoma") == [mine[1]["id"]]
    Prediction.objects.filter(pk=mine[0]["id"]).update(created_at=timezone.now() - dt.timedelta(days=3))
    today = timezone.now().date()
    assert ids(created_before=str(today - dt.timedelta(days=1))) == [mine[0]["id"]]
    assert mine[0]["id"] not in ids(created_after=str(today))
    assert client.get(URL, {"created_after": "yesterday"}).status_code == 400


def test_the_history_refuses_a_filter_it_would_otherwise_ignore_and_says_why(client, history):
    def refusal(params):
        response = client.get(URL, params)
        assert response.status_code == 400, response.json()
        return response.json()

    # A misspelt filter listed every prediction, as if all matched.
    assert refusal({"created_from": "2030-01-01"}) == {"created_from": [
        "not a parameter of this list; filter with model, dataset, label, created_after, "
        "created_before"]}
    assert refusal({"model": ["1", "2"]}) == {"model": ["given more than once; give one value"]}
    # A range that ends before it starts listed nothing, as if nothing matched.
    assert refusal({"created_after": "2030-01-02", "created_before": "2030-01-01"}) == {
        "created_before": ["2030-01-01 is before created_after (2030-01-02); no day is in that range"]}


def test_the_history_takes_the_pages_query_string_where_an_empty_filter_is_none(client, history):
    # What the history page's filter form sends when nothing is chosen.
    params = {"model": "", "dataset": "", "label": "", "created_after": "", "created_before": ""}
    response = client.get(URL, {**params, "limit": "2"})
    assert response.status_code == 200, response.json()
    assert response.json()["count"] == 3


def test_the_stored_image_is_served_as_a_download_of_its_real_type(client, model):
    jpeg = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(jpeg, format="JPEG")
    data = jpeg.getvalue()
    # The name claims HTML; the type served comes from the decoded format.
    [result] = post(client, [upload("page.html", data)], model=model.pk).json()

    response = client.get(result["image_url"])

    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    assert response["Content-Disposition"] == 'attachment; filename="page.jpg"'
    assert response["X-Content-Type-Options"] == "nosniff"
    assert b"".join(response.streaming_content) == data


def test_deleting_a_prediction_removes_its_row_and_its_file(
    client, history, media_root, django_capture_on_commit_callbacks
):
    target = history["mine"][0]
    path = Path(media_root) / Prediction.objects.get(pk=target["id"]).image.name
    assert path.exists()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.delete(f"{URL}{target['id']}/")
    assert response.status_code == 204
    assert not Prediction.objects.filter(pk=target["id"]).exists()
    assert not path.exists()
    assert len(stored_uploads(media_root)) == 3  # the other predictions keep theirs


# --- the dataset's preprocessing is understood ---------------------------------------------------


@pytest.mark.parametrize("flag", sorted(services.MEDMNIST_PREPROCESSING))
def test_every_medmnist_preprocessing_description_is_understood(flag):
    entry = services.MEDMNIST_PREPROCESSING[flag]
    parse_crop(entry["crop"])
    resampling_filter(entry["resize"])


# --- pages -----------------------------------------------------------------------------------------


@pytest.fixture
def browser_client(client, owner):
    from django.test import Client

    web = Client()
    assert web.login(username=owner.username, password=PASSWORD)
    return web


def test_the_classify_page_groups_visible_models_by_dataset_with_a_default_each(
    browser_client, owner, dataset, register
):
    register(dataset, owner, name="alpha", val_accuracy=0.7)
    register(dataset, owner, name="beta", val_accuracy=0.8)
    stranger = UserFactory(username="tess")
    register(DatasetFactory(owner=stranger, name="Secret set"), stranger, name="secret")

    response = browser_client.get(reverse("classify"))

    html = response.content.decode()
    assert response.status_code == 200
    assert '<optgroup label="Tiny blood models">' in html
    assert f'<option value="dataset:{dataset.pk}">Tiny blood: dataset default (beta v1)</option>' in html
    assert "alpha v1 · compact_cnn · val. accuracy 0.700" in html
    assert "Secret set" not in html and "secret v1" not in html
    assert 'src="/static/js/classify.js"' in html
    assert "<script>" not in html  # no inline script under the CSP


def test_a_public_model_of_a_dataset_you_cannot_see_is_offered_without_a_dataset_default(
    browser_client, client, register
):
    stranger = UserFactory(username="tess")
    secret = DatasetFactory(owner=stranger, name="Secret set")
    shared = register(secret, stranger, name="shared", visibility=Visibility.PUBLIC)

    html = browser_client.get(reverse("classify")).content.decode()
    assert f'<option value="model:{shared.pk}"' in html
    assert f'value="dataset:{secret.pk}"' not in html  # the API would refuse that dataset
    assert post(client, [png(np.zeros((28, 28, 3), dtype=np.uint8))],
                model=shared.pk).status_code == 201


def test_the_history_page_shows_your_predictions_and_deletes_one(
    browser_client, history, media_root, django_capture_on_commit_callbacks
):
    response = browser_client.get(reverse("prediction-list"))
    html = response.content.decode()
    for result in history["mine"]:
        assert f'data-prediction-id="{result["id"]}"' in html
    assert f'data-prediction-id="{history["theirs"]["id"]}"' not in html
    # The probability of the predicted class, with one decimal as on the classify page.
    shown = Prediction.objects.get(pk=history["mine"][0]["id"])
    percent = 100 * shown.probabilities[shown.predicted_label]
    row = html.split(f'data-prediction-id="{shown.pk}"')[1].split("</tr>")[0]
    assert f'<td class="num">{percent:.1f}%</td>' in row

    target = history["mine"][1]["id"]
    with django_capture_on_commit_callbacks(execute=True):
        response = browser_client.post(reverse("prediction-delete", args=[target]),
                                       {"next": "/predictions/?label=x"})
    assert response.status_code == 302 and response["Location"] == "/predictions/?label=x"
    assert not Prediction.objects.filter(pk=target).exists()
    assert len(stored_uploads(media_root)) == 3


def test_the_history_page_cannot_delete_someone_elses_prediction(browser_client, history):
    their_id = history["theirs"]["id"]
    response = browser_client.post(reverse("prediction-delete", args=[their_id]))
    assert response.status_code == 404
    assert Prediction.objects.filter(pk=their_id).exists()


def test_the_history_page_filters_by_the_dataset_of_a_public_model_and_never_ignores_a_filter(
    history, dataset
):
    from django.contrib.auth import get_user_model
    from django.test import Client

    stranger = Client()  # used the owner's public model; the owner's dataset stays private
    stranger.force_login(get_user_model().objects.get(username="stan"))
    their_row = f'data-prediction-id="{history["theirs"]["id"]}"'
    html = stranger.get(reverse("prediction-list"), {"dataset": dataset.pk}).content.decode()
    assert their_row in html and "errorlist" not in html
    html = stranger.get(reverse("prediction-list"), {"model": 999999}).content.decode()
    assert "errorlist" in html and their_row not in html
    assert "No predictions match these filters." in html


def test_the_history_page_names_its_fields_and_refuses_a_range_that_ends_before_it_starts(
    browser_client, history
):
    html = browser_client.get(reverse("prediction-list"), {
        "created_after": "2030-01-02", "created_before": "2030-01-01", "model": "abc",
    }).content.decode()
    errors = html.split('<ul class="errorlist">')[1].split("</ul>")[0]
    assert "<li>Model: Select a valid choice. abc is not one of the available choices.</li>" in errors
    assert "<li>To: 2030-01-01 is before the From day (2030-01-02); no day is in that range</li>" in errors
    assert "No predictions match these filters." in html


def test_the_history_page_filters_by_label(browser_client, history):
    relabel(history)
    html = browser_client.get(reverse("prediction-list"), {"label": "carcinoma"}).content.decode()
    shown = [r["id"] for r in history["mine"] if f'data-prediction-id="{r["id"]}"' in html]
    assert shown == [history["mine"][1]["id"]]



def test_it_skips_the_heatmap_when_the_client_asks_for_speed(client, model, dataset_arrays):
    response = post(client, [png(dataset_arrays["test_images"][0])], model=model.pk, gradcam="false")

    assert response.status_code == 201, response.content
    assert response.json()[0]["gradcam"] is None
    assert response.json()[0]["predicted_label"]
    assert "app;dur=" in response.headers["Server-Timing"]


@pytest.mark.parametrize("threshold", [None, 0.3, 0.9])
@pytest.mark.parametrize("num_classes", [2, 4])
def test_predicted_indices_of_a_batch_are_those_of_its_rows(threshold, num_classes):
    probabilities = np.random.default_rng(num_classes).dirichlet(np.ones(num_classes), size=50)
    probabilities[0] = 1 / num_classes  # a tie goes to the first class, as argmax does
    expected = [services_predict.predicted_index(row, threshold) for row in probabilities]
    assert services_predict.predicted_indices(probabilities, threshold).tolist() == expected


def test_the_history_shows_a_small_png_of_any_upload_tiff_and_16_bit_included(client, model):
    # Browsers cannot show TIFF: the history's thumbnails would be broken images. A 16-bit
    # 300x200 TIFF comes back, with ?preview=true, as an 8-bit PNG of at most 128 pixels a side.
    ramp = (np.arange(300 * 200, dtype=np.uint32).reshape(200, 300) % 65536).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="TIFF")
    created = post(client, [upload("scan.tif", buffer.getvalue())], model=model.pk)
    assert created.status_code == 201, created.content
    image_url = f"{URL}{created.json()[0]['id']}/image/"

    as_stored = client.get(image_url)
    assert as_stored["Content-Type"] == "image/tiff"
    preview = client.get(image_url, {"preview": "true"})
    assert preview.status_code == 200 and preview["Content-Type"] == "image/png"
    shown = Image.open(io.BytesIO(preview.content))
    assert shown.format == "PNG" and shown.mode == "L" and shown.size == (128, 85)
    assert client.get(image_url, {"preview": "yes please"}).status_code == 400

    page = Client()
    page.force_login(model.owner)
    assert f'{image_url}?preview=true"' in page.get("/predictions/").content.decode()

"""Export bundles: every format reproduces the Keras model, or the export is refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest

from medml import export
from medml.architectures import build_model

pytestmark = pytest.mark.slow

CLASS_NAMES = ["adenoma", "carcinoma", "normal"]
CARD = "# Model card: tiny v1\n\nResearch use only, not for diagnosis.\n"


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("export-model") / "tiny.keras"
    build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=3, width=4).save(path)
    return path


@pytest.fixture(scope="module")
def samples() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 28, 28, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def bundle(model_path, samples, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("export") / "bundle.zip"
    manifest = export.export_bundle(
        model_path=model_path, out_path=out, sample_images=samples,
        sample_labels=np.array([0, 1, 2, 0, 1, 2]), class_names=CLASS_NAMES, model_card=CARD,
        metadata={"decision_threshold": None},
    )
    return out, manifest


def read_npy(archive: zipfile.ZipFile, name: str) -> np.ndarray:
    return np.load(io.BytesIO(archive.read(name)), allow_pickle=False)


def test_the_bundle_holds_every_format_the_test_inputs_the_spec_and_the_card(bundle, samples):
    path, manifest = bundle
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        assert {"model.keras", "model.tflite", "saved_model/saved_model.pb", "preprocessing.json",
                "MODEL_CARD.md", "README.md", "manifest.json", "test_inputs/images.npy",
                "test_inputs/expected_probabilities.npy", "test_inputs/labels.npy"} <= names
        assert ("model.onnx" in names) == export.onnx_available()
        assert np.array_equal(read_npy(archive, "test_inputs/images.npy"), samples)
        spec = json.loads(archive.read("preprocessing.json"))
        assert spec["input"]["shape"] == [None, 28, 28, 3]
        assert spec["input"]["dtype"] == "uint8"
        assert spec["output"]["class_names"] == CLASS_NAMES
        assert "layers of the model" in spec["preprocessing_inside_model"]
        assert archive.read("MODEL_CARD.md").decode() == CARD
        stored = json.loads(archive.read("manifest.json"))
    assert stored == manifest
    assert set(manifest["files"]) == names - {"manifest.json"}


def test_every_exported_format_agrees_with_keras_to_1e_4(bundle, model_path, samples):
    path, manifest = bundle
    checked = {check["format"]: check for check in manifest["parity"]}
    expected_formats = {"SavedModel", "TFLite"} | ({"ONNX"} if export.onnx_available() else set())
    assert set(checked) == expected_formats
    for check in checked.values():
        assert check["ok"] and check["max_abs_diff"] <= 1e-4

    # Independently of the bundle's own check: its TFLite model run here matches Keras.
    reference = keras.models.load_model(model_path, compile=False)(samples, training=False).numpy()
    with zipfile.ZipFile(path) as archive:
        tflite = archive.read("model.tflite")
        expected = read_npy(archive, "test_inputs/expected_probabilities.npy")
    np.testing.assert_allclose(expected, reference, atol=1e-6)
    np.testing.assert_allclose(export.run_tflite(tflite, samples), reference, atol=1e-4)


def test_an_export_whose_tflite_output_drifts_is_refused_with_the_discrepancy(
        model_path, samples, tmp_path, monkeypatch):
    real = export.run_tflite

    def drifting(tflite_bytes, images):
        outputs = real(tflite_bytes, images)
        outputs[2, 1] += 3e-3
        return outputs

    monkeypatch.setattr(export, "run_tflite", drifting)
    out = tmp_path / "refused.zip"
    with pytest.raises(export.ExportParityError) as caught:
        export.export_bundle(model_path=model_path, out_path=out, sample_images=samples,
                             class_names=CLASS_NAMES, model_card=CARD, include_onnx=False)

    message = str(caught.value)
    assert "TFLite output differs from Keras by up to 0.003" in message
    assert "on test input 2, class 1" in message
    assert [check.format for check in caught.value.checks if not check.ok] == ["TFLite"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_a_bundle_without_onnx_says_why_in_its_readme(model_path, samples, tmp_path):
    out = tmp_path / "no-onnx.zip"
    manifest = export.export_bundle(model_path=model_path, out_path=out, sample_images=samples,
                                    class_names=CLASS_NAMES, model_card=CARD, include_onnx=False)
    with zipfile.ZipFile(out) as archive:
        assert "model.onnx" not in archive.namelist()
        readme = archive.read("README.md").decode()
    assert "ONNX: not included" in readme
    assert manifest["onnx"] == export.ONNX_UNAVAILABLE_NOTE
    assert manifest["formats"] == ["keras", "saved_model", "tflite"]


def test_sample_images_of_the_wrong_shape_are_refused(model_path, tmp_path):
    with pytest.raises(ValueError, match=r"sample_images must have shape \(N, 28, 28, 3\)"):
        export.export_bundle(model_path=model_path, out_path=tmp_path / "x.zip",
                             sample_images=np.zeros((2, 28, 28, 1), np.uint8),
                             class_names=CLASS_NAMES, model_card=CARD)

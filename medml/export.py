"""Export a trained model as a self-contained bundle, checked against the original when made.

:func:`export_bundle` writes a zip holding the ``.keras`` file, a TensorFlow SavedModel, a
TFLite model, an ONNX model when ``tf2onnx`` and ``onnxruntime`` are installed, the input
specification, a few test images with the probabilities Keras gives for them, the model card and
a manifest of sha256 digests. Every exported format is run on the test images and must agree with
Keras to ``tolerance``; otherwise nothing is written and :class:`ExportParityError` says which
format differs, by how much and where.

Preprocessing is part of every exported model: each takes raw ``uint8`` pixels ``(N, H, W, C)``
at the dataset's size and returns softmax probabilities, exactly like the ``.keras`` file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import tempfile
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medml.evaluate import predict_proba
from medml.runtime import library_versions

BUNDLE_FORMAT = 1
DEFAULT_TOLERANCE = 1e-4
ONNX_OPSET = 17
ONNX_UNAVAILABLE_NOTE = (
    "No ONNX model: tf2onnx and onnxruntime are not installed where this bundle was made. "
    "Convert the SavedModel with `python -m tf2onnx.convert --saved-model saved_model "
    "--output model.onnx` and check it against test_inputs/ before use."
)


class ExportParityError(Exception):
    """An exported format whose outputs differ from the Keras model's; nothing was exported."""

    def __init__(self, message: str, checks: list[ParityCheck]):
        super().__init__(message)
        self.checks = checks


@dataclass(frozen=True)
class ParityCheck:
    """How closely one exported format reproduced the Keras probabilities on the test images."""

    format: str
    max_abs_diff: float
    worst_image: int
    worst_class: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def describe(self) -> str:
        return (f"{self.format} output differs from Keras by up to {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:g}) on test input {self.worst_image}, "
                f"class {self.worst_class}")


def onnx_available() -> bool:
    """Whether ONNX conversion and checking can run here (``tf2onnx`` and ``onnxruntime``)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tf2onnx", "onnxruntime"))


def export_bundle(
    *,
    model_path: Path,
    out_path: Path,
    sample_images: np.ndarray,
    class_names: Sequence[str],
    model_card: str,
    sample_labels: np.ndarray | None = None,
    metadata: dict | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    include_onnx: bool | None = None,
) -> dict:
    """Write the export bundle of the ``.keras`` file at ``model_path`` to the zip ``out_path``.

    Args:
        model_path: The model to export (loaded with ``safe_mode=True``).
        out_path: Where the zip goes; written only when every check passes.
        sample_images: A handful of raw ``uint8`` images ``(N, H, W, C)`` at the model's
            input size, stored as test inputs and used for the parity checks.
        class_names: One name per output.
        model_card: Markdown, stored as ``MODEL_CARD.md``.
        sample_labels: True labels of ``sample_images``, stored beside them when given.
        metadata: Extra facts for ``preprocessing.json`` (e.g. the dataset's source
            preprocessing and the decision threshold).
        tolerance: Largest absolute difference in any probability allowed between Keras and
            an exported format.
        include_onnx: ``None`` exports ONNX when :func:`onnx_available`; ``False`` never.

    Returns:
        The bundle's manifest (also stored as ``manifest.json``).

    Raises:
        ExportParityError: when an exported format disagrees with Keras beyond ``tolerance``.
        ValueError: for sample images that do not fit the model.
    """
    sample_images = np.asarray(sample_images)
    model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    input_shape = tuple(int(d) for d in model.input_shape[1:])
    if sample_images.ndim != 4 or tuple(sample_images.shape[1:]) != input_shape:
        raise ValueError(
            f"sample_images must have shape (N, {', '.join(map(str, input_shape))}). "
            f"Received: shape={sample_images.shape}"
        )
    if sample_images.dtype != np.uint8:
        raise ValueError(f"sample_images must be uint8. Received: dtype={sample_images.dtype}")
    if include_onnx is None:
        include_onnx = onnx_available()
    expected = predict_proba(model, sample_images)

    with tempfile.TemporaryDirectory(prefix="medml-export-") as tmp:
        root = Path(tmp) / "bundle"
        root.mkdir()
        shutil.copyfile(model_path, root / "model.keras")
        saved_model = root / "saved_model"
        model.export(str(saved_model), format="tf_saved_model", verbose=False)
        tflite_bytes = convert_to_tflite(saved_model)
        (root / "model.tflite").write_bytes(tflite_bytes)
        if include_onnx:
            convert_to_onnx(model, root / "model.onnx")

        checks = [
            _compare("SavedModel", expected, run_saved_model(saved_model, sample_images), tolerance),
            _compare("TFLite", expected, run_tflite(tflite_bytes, sample_images), tolerance),
        ]
        if include_onnx:
            checks.append(
                _compare("ONNX", expected, run_onnx(root / "model.onnx", sample_images), tolerance)
            )
        failed = [check for check in checks if not check.ok]
        if failed:
            raise ExportParityError(
                "export refused: " + "; ".join(check.describe() for check in failed), checks
            )

        tests = root / "test_inputs"
        tests.mkdir()
        np.save(tests / "images.npy", sample_images)
        np.save(tests / "expected_probabilities.npy", expected.astype(np.float32))
        if sample_labels is not None:
            np.save(tests / "labels.npy", np.asarray(sample_labels).astype(np.int64))
        spec = preprocessing_spec(input_shape, list(class_names), metadata or {})
        (root / "preprocessing.json").write_text(json.dumps(spec, indent=2) + "\n")
        (root / "MODEL_CARD.md").write_text(model_card)
        (root / "README.md").write_text(_readme(input_shape, include_onnx, tolerance))
        manifest = {
            "bundle_format": BUNDLE_FORMAT,
            "formats": ["keras", "saved_model", "tflite"] + (["onnx"] if include_onnx else []),
            "onnx": None if include_onnx else ONNX_UNAVAILABLE_NOTE,
            "parity": [asdict(check) | {"ok": check.ok} for check in checks],
            "libraries": library_versions() | _onnx_versions(include_onnx),
            "files": {},
        }
        manifest["files"] = {
            path.relative_to(root).as_posix(): _sha256(path)
            for path in sorted(root.rglob("*")) if path.is_file()
        }
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")

        # A name of its own, so two exports of one model at once never write one file.
        partial = out_path.with_name(f"{out_path.name}.{uuid.uuid4().hex}.part")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(root).as_posix())
        partial.replace(out_path)
    return manifest


def preprocessing_spec(input_shape: tuple[int, ...], class_names: list[str], metadata: dict) -> dict:
    """What a consumer must feed the exported models and what comes back."""
    height, width, channels = input_shape
    return {
        "input": {
            "name": "image",
            "shape": [None, height, width, channels],
            "layout": "NHWC",
            "dtype": "uint8",
            "range": [0, 255],
            "color": "grayscale" if channels == 1 else "RGB",
        },
        "output": {
            "shape": [None, len(class_names)],
            "dtype": "float32",
            "meaning": "softmax class probabilities, in class_names order",
            "class_names": class_names,
        },
        "preprocessing_inside_model": (
            "Rescaling, and any resizing or channel conversion the architecture needs, are layers "
            "of the model: feed raw pixels at the size above, do not scale or normalise them."
        ),
        **metadata,
    }


# --- Converters -----------------------------------------------------------------------------------


def convert_to_tflite(saved_model: Path) -> bytes:
    """A float32 TFLite flatbuffer of a SavedModel (no quantisation: parity comes first)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    return converter.convert()


def convert_to_onnx(model: keras.Model, path: Path) -> None:
    """An ONNX file of ``model`` with a ``uint8`` input named ``image`` and a free batch size."""
    from medml.infer import convert_to_onnx as convert

    convert(model, Path(path), input_name="image")


# --- Runners (one per format; the parity checks call these) --------------------------------------


def run_saved_model(saved_model: Path, images: np.ndarray) -> np.ndarray:
    loaded = tf.saved_model.load(str(saved_model))
    return np.asarray(loaded.serve(tf.convert_to_tensor(images)), dtype=np.float32)


def run_tflite(tflite_bytes: bytes, images: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        # TensorFlow announces the interpreter's move to another package; it still works here.
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    source = interpreter.get_input_details()[0]
    interpreter.resize_tensor_input(source["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], images)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]),
                      dtype=np.float32)


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: images})[0], dtype=np.float32)


# --- Helpers ----------------------------------------------------------------------------------------


def _compare(name: str, expected: np.ndarray, actual: np.ndarray, tolerance: float) -> ParityCheck:
    actual = np.asarray(actual, dtype=np.float64)
    if actual.shape != expected.shape:
        return ParityCheck(name, float("inf"), 0, 0, tolerance)
    diff = np.abs(actual - expected.astype(np.float64))
    diff = np.where(np.isfinite(diff), diff, np.inf)
    image, klass = np.unravel_index(int(np.argmax(diff)), diff.shape)
    return ParityCheck(name, float(diff[image, klass]), int(image), int(klass), tolerance)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _onnx_versions(include_onnx: bool) -> dict:
    if not include_onnx:
        return {}
    import onnxruntime
    import tf2onnx

    return {"tf2onnx": tf2onnx.__version__, "onnxruntime": onnxruntime.__version__}


def _readme(input_shape: tuple[int, ...], include_onnx: bool, tolerance: float) -> str:
    height, width, channels = input_shape
    onnx_line = (
        f"- `model.onnx`: ONNX (opset {ONNX_OPSET}); "
        "`onnxruntime.InferenceSession(\"model.onnx\")`, input `image`."
        if include_onnx else f"- ONNX: not included. {ONNX_UNAVAILABLE_NOTE}"
    )
    return f"""# Model export bundle

Every model here takes raw `uint8` pixels of shape `(N, {height}, {width}, {channels})` (NHWC) and
returns `float32` softmax probabilities in the class order of `preprocessing.json`. Scaling and any
resizing are inside the model: do not normalise the pixels yourself.

- `model.keras`: the registered Keras 3 model; `keras.models.load_model("model.keras")`.
- `saved_model/`: TensorFlow SavedModel; `tf.saved_model.load("saved_model").serve(images)`.
- `model.tflite`: TensorFlow Lite (float32, no quantisation).
{onnx_line}
- `test_inputs/images.npy`, `test_inputs/expected_probabilities.npy`: a few test images and the
  probabilities the Keras model gives for them (`labels.npy`: their true classes).
- `preprocessing.json`: the input and output specification.
- `MODEL_CARD.md`: what the model is, how it was trained and evaluated, and its limits.
- `manifest.json`: sha256 of every file and the parity checks.

When this bundle was made, every format above reproduced `expected_probabilities.npy` to within
{tolerance:g} (largest absolute difference); `manifest.json` lists the measured differences.
Research use only, not for diagnosis.
"""

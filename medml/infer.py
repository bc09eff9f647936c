"""Serving a trained model: load once, predict through a fast runtime, check the inputs.

A :class:`Predictor` wraps a ``.keras`` file loaded with ``safe_mode=True`` (no arbitrary code
from the file runs). Predictions go through ONNX Runtime: the model is converted once with
``tf2onnx`` (the ``.onnx`` file is kept beside the ``.keras`` file, so other processes reuse it),
checked against Keras on probe images, and run in an ``InferenceSession`` sized to the threads it
is given. A request then costs one session call (well under a millisecond for a small CNN on one
image), not the per-call setup of ``model.predict``. Where ONNX Runtime is missing, the
conversion fails or the outputs disagree, the predictor falls back to the model called through a
``tf.function`` with a fixed input signature (one trace for every batch size) and says so in
``runtime``. Grad-CAM always uses the Keras model, which is kept loaded.

:func:`get_predictor` keeps a few predictors per process, keyed by the artifact's sha256 and the
thread count, so a model is read from disk and converted once.

:class:`InputStats` holds per-channel statistics of the training images' mean intensities; an
upload far outside them is flagged, since a classifier has to answer even for an image unlike
anything it was trained on.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from medml.runtime import available_cpu_count

logger = logging.getLogger(__name__)

PREDICTOR_CACHE_SIZE = 4
# |z| of an image's mean intensity (per channel) beyond which it is reported as unusual.
INTENSITY_Z_THRESHOLD = 4.0
# Test-time augmentation views: the image, mirrored left-right, mirrored top-bottom.
TTA_VIEWS = ("identity", "flip_left_right", "flip_up_down")
# Below this probability of its predicted class, an answer is reported as uncertain.
LOW_CONFIDENCE = 0.6
# ONNX Runtime must reproduce Keras to this absolute difference in every probability.
ONNX_PARITY_TOLERANCE = 1e-4
ONNX_OPSET = 17
RUNTIMES = ("auto", "onnxruntime", "tensorflow")

_threads_configured = False
_threads_lock = threading.Lock()


def configure_cpu_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Size TensorFlow's CPU thread pools for serving, once per process.

    One request is a small batch of small images: its ops run one after another, each split
    across cores, so the intra-op pool gets every core this process may use and the inter-op pool
    stays small. Values already set (``TF_NUM_INTRAOP_THREADS``, an earlier call) are kept, and
    nothing changes once TensorFlow has started running, which it refuses.
    """
    global _threads_configured
    with _threads_lock:
        if _threads_configured:
            return
        _threads_configured = True
        threading_config = tf.config.threading
        try:
            if threading_config.get_intra_op_parallelism_threads() == 0:
                threading_config.set_intra_op_parallelism_threads(intra_op or available_cpu_count())
            if threading_config.get_inter_op_parallelism_threads() == 0:
                threading_config.set_inter_op_parallelism_threads(inter_op or 1)
        except RuntimeError:
            logger.info("TensorFlow thread pools left as they were: the runtime already started")


@dataclass(frozen=True)
class TTAResult:
    """Probabilities averaged over the test-time augmentation views, and how much they disagree.

    Attributes:
        probabilities: ``(N, num_classes)`` mean over the views.
        spread: ``(N,)`` standard deviation, across the views, of the probability of each image's
            predicted class: 0 when every view agrees, larger when the model is unsure.
        views: ``(views, N, num_classes)`` each view's own probabilities, in :data:`TTA_VIEWS`
            order.
    """

    probabilities: np.ndarray
    spread: np.ndarray
    views: np.ndarray


def answer_warnings(probabilities: np.ndarray, predicted: np.ndarray, class_names: list[str], *,
                    min_confidence: float = LOW_CONFIDENCE,
                    view_predictions: np.ndarray | None = None) -> dict[int, list[str]]:
    """Warnings about the answers themselves, by row: a predicted class whose probability is
    below ``min_confidence``, and test-time augmentation views that predict another class.

    Args:
        probabilities: ``(N, num_classes)`` the probabilities answered.
        predicted: ``(N,)`` the class answered for each row (which a decision threshold may have
            chosen, so not always the most probable one).
        class_names: Names of the classes, for the messages.
        view_predictions: ``(views, N)`` the class each test-time augmentation view predicts on
            its own (:data:`TTA_VIEWS` order), or ``None`` without test-time augmentation.

    Returns:
        Row index -> messages, for the rows that have any. A probability that is not a number
        (a diverged model) is flagged too.
    """
    probabilities, predicted = np.asarray(probabilities), np.asarray(predicted, dtype=np.int64)
    chosen = probabilities[np.arange(len(predicted)), predicted]
    flagged = ~(chosen >= min_confidence)  # NaN included
    if view_predictions is not None:
        view_predictions = np.asarray(view_predictions)
        flagged |= (view_predictions != predicted).any(axis=0)
    out: dict[int, list[str]] = {}
    for i in np.flatnonzero(flagged).tolist():
        index, notes = int(predicted[i]), []
        if np.isnan(chosen[i]):
            notes.append("invalid output: the model's probabilities are not numbers (NaN), so "
                         "the answer means nothing")
        elif chosen[i] < min_confidence:
            notes.append(f"low confidence: {class_names[index]} has a probability of "
                         f"{chosen[i]:.2f}, below {min_confidence:.2f}")
        if view_predictions is not None:
            others = [int(v) for v in view_predictions[:, i] if v != index]
            if others:
                named = ", ".join(class_names[v] for v in sorted(set(others)))
                notes.append(f"test-time augmentation disagrees: {len(others)} of "
                             f"{len(view_predictions)} views (the image and its mirror images) "
                             f"predict {named}")
        out[i] = notes
    return out


class OnnxUnavailableError(RuntimeError):
    """The model could not be served through ONNX Runtime; the message says why."""


def _onnx_session(path: Path, threads: int):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: graph rewrites are not news
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def convert_to_onnx(model: keras.Model, path: Path, *, input_name: str = "images") -> None:
    """Write ``model`` as ONNX (its input dtype, a free batch size, float32 out), atomically."""
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)  # one INFO line per graph rewrite

    shape, dtype = (None, *model.inputs[0].shape[1:]), tf.as_dtype(model.inputs[0].dtype)
    signature = (tf.TensorSpec(shape, dtype, name=input_name),)

    @tf.function(input_signature=signature, autograph=False)
    def serve(images):
        return tf.cast(model(images, training=False), tf.float32)

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    os.close(handle)
    try:
        tf2onnx.convert.from_function(serve, input_signature=signature, opset=ONNX_OPSET,
                                      output_path=tmp)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


class Predictor:
    """A loaded model and its prediction function (ONNX Runtime, or a compiled ``tf.function``).

    Args:
        model: A model from :mod:`medml.architectures` (``uint8`` ``(N, H, W, C)`` in, softmax
            out), or one loaded from its ``.keras`` file.
        warm_up: Run one prediction now, so the first request does not pay for the setup.
        onnx_path: Where the model's ONNX file is, or is written when missing. ``None`` serves
            through TensorFlow.
        threads: CPU threads for one ONNX Runtime call; ``None`` or 0: every core this process
            may use. A web process serving one image per request is fastest with 1 per process.
        runtime: ``"auto"`` (ONNX Runtime when it works, TensorFlow otherwise),
            ``"onnxruntime"`` (raise :class:`OnnxUnavailableError` when it does not work) or
            ``"tensorflow"``.
    """

    def __init__(self, model: keras.Model, *, warm_up: bool = True,
                 onnx_path: str | os.PathLike | None = None, threads: int | None = None,
                 runtime: str = "auto"):
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}. Received: runtime={runtime!r}")
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(
                f"the model must take images of a fixed size (N, H, W, C). Received: input shape {shape}"
            )
        self.model = model
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in shape[1:])  # type: ignore[assignment]
        self.input_dtype = tf.as_dtype(model.inputs[0].dtype)
        self.num_classes = int(model.outputs[0].shape[-1])
        self.threads = int(threads) if threads else available_cpu_count()
        signature = [tf.TensorSpec((None, *self.input_shape), self.input_dtype, name="images")]
        self._predict = tf.function(self._forward, input_signature=signature, autograph=False)
        self._session = None
        self._session_input = ""
        self.runtime = "tensorflow"
        self.runtime_note = "" if runtime != "auto" else "no ONNX file was given"
        if runtime == "onnxruntime" and onnx_path is None:
            raise OnnxUnavailableError("runtime='onnxruntime' needs an onnx_path")
        if runtime != "tensorflow" and onnx_path is not None:
            try:
                self._start_onnx(Path(onnx_path))
            except OnnxUnavailableError as exc:
                if runtime == "onnxruntime":
                    raise
                self.runtime_note = str(exc)
                logger.warning("serving through TensorFlow: %s", exc)
        self._explainer = None
        self._explainer_lock = threading.Lock()
        if warm_up:
            self.predict(np.zeros((1, *self.input_shape), dtype=self.input_dtype.as_numpy_dtype))

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, warm_up: bool = True, threads: int | None = None,
                  runtime: str = "auto") -> Predictor:
        """Load a ``.keras`` artifact safely (no Lambda layers or other code from the file).

        The ONNX file lives beside it, with the same name and the suffix ``.onnx``.
        """
        configure_cpu_threads()
        path = Path(path)
        model = keras.models.load_model(path, compile=False, safe_mode=True)
        return cls(model, warm_up=warm_up, onnx_path=path.with_suffix(".onnx"), threads=threads,
                   runtime=runtime)

    def _start_onnx(self, path: Path) -> None:
        """Convert when needed, open a session and check it against Keras on probe images."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise OnnxUnavailableError("onnxruntime is not installed") from exc
        probe = np.random.default_rng(0).integers(0, 256, (4, *self.input_shape)).astype(
            self.input_dtype.as_numpy_dtype)
        expected = self._predict(tf.convert_to_tensor(probe)).numpy()
        for attempt in ("cached", "converted"):
            if attempt == "converted" or not path.exists():
                try:
                    convert_to_onnx(self.model, path)
                except Exception as exc:  # tf2onnx raises many kinds for unsupported graphs
                    raise OnnxUnavailableError(f"the model could not be converted to ONNX: {exc}") from exc
            try:
                session = _onnx_session(path, self.threads)
                actual = session.run(None, {session.get_inputs()[0].name: probe})[0]
            except Exception as exc:  # a damaged or stale file: convert again once
                if attempt == "converted":
                    raise OnnxUnavailableError(f"ONNX Runtime could not run the model: {exc}") from exc
                continue
            difference = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected)))
            if difference <= ONNX_PARITY_TOLERANCE:
                self._session, self._session_input = session, session.get_inputs()[0].name
                self.runtime, self.runtime_note = "onnxruntime", ""
                return
            if attempt == "converted":
                raise OnnxUnavailableError(
                    f"ONNX Runtime differs from Keras by {difference:.2e} "
                    f"(tolerance {ONNX_PARITY_TOLERANCE:.0e})")

    def _forward(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(images, training=False), tf.float32)

    def _checked(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, self.input_shape))}). "
                f"Received: shape={images.shape}"
            )
        if images.dtype != self.input_dtype.as_numpy_dtype:
            raise ValueError(
                f"images must be {self.input_dtype.name}. Received: dtype={images.dtype}"
            )
        return images

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self._session is not None:
            output = self._session.run(None, {self._session_input: np.ascontiguousarray(images)})[0]
            return np.asarray(output, dtype=np.float32)
        return self._predict(tf.convert_to_tensor(images)).numpy()

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, ``float32`` ``(N, num_classes)``, for raw images ``(N, H, W, C)``."""
        images = self._checked(images)
        if len(images) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return self._run(images)

    def predict_tta(self, images: np.ndarray) -> TTAResult:
        """Probabilities averaged over the image and its two mirror images, with their spread."""
        images = self._checked(images)
        if len(images) == 0:
            empty = np.zeros((0, self.num_classes), dtype=np.float32)
            return TTAResult(empty, np.zeros((0,), dtype=np.float32),
                             np.zeros((len(TTA_VIEWS), 0, self.num_classes), dtype=np.float32))
        stacked = np.concatenate([images, images[:, :, ::-1], images[:, ::-1]])  # as TTA_VIEWS
        views = self._run(stacked).reshape(len(TTA_VIEWS), len(images), self.num_classes)
        mean = views.mean(axis=0)
        predicted = mean.argmax(axis=1)
        chosen = views[:, np.arange(len(images)), predicted]  # (views, N)
        return TTAResult(mean.astype(np.float32), chosen.std(axis=0).astype(np.float32),
                         views.astype(np.float32))

    @property
    def explainer(self):
        """The model's Grad-CAM (see :mod:`medml.explain`), built and compiled on first use."""
        with self._explainer_lock:
            if self._explainer is None:
                from medml.ensemble import explainer_for

                self._explainer = explainer_for(self.model)
            return self._explainer


class _PredictorCache:
    """Loaded models, least recently used dropped first. A model is loaded once however many
    threads ask for it at the same time, and loading one (seconds, for the ONNX conversion)
    never holds up requests for models already loaded."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int | None], Predictor] = OrderedDict()
        self._lock = threading.Lock()  # held for dictionary operations only
        self._loading: dict[tuple[str, int | None], threading.Lock] = {}

    def _hit(self, key: tuple[str, int | None]) -> Predictor | None:
        predictor = self._items.get(key)
        if predictor is not None:
            self._items.move_to_end(key)
        return predictor

    def get(self, path: str | os.PathLike, sha256: str, threads: int | None) -> Predictor:
        key = (sha256, threads)
        with self._lock:
            predictor = self._hit(key)
            if predictor is not None:
                return predictor
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # the first thread loads; the others wait for it, then find the model
            with self._lock:
                predictor = self._hit(key)
            if predictor is not None:
                return predictor
            try:
                predictor = Predictor.from_file(path, threads=threads)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # in the cache before the load is over: no one starts another
                self._items[key] = predictor
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return predictor

    def peek(self, sha256: str, threads: int | None) -> Predictor | None:
        with self._lock:
            return self._items.get((sha256, threads))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_cache = _PredictorCache(PREDICTOR_CACHE_SIZE)


def get_predictor(path: str | os.PathLike, sha256: str, *, threads: int | None = None) -> Predictor:
    """The process's predictor for an artifact, loading ``path`` the first time ``sha256`` is asked.

    The caller vouches that ``path`` holds the bytes with ``sha256``; later calls with the same
    hash and ``threads`` return the loaded model without reading ``path``. The least recently
    used of more than :data:`PREDICTOR_CACHE_SIZE` models is dropped.
    """
    return _cache.get(path, sha256, threads)


def cached_predictor(sha256: str, *, threads: int | None = None) -> Predictor | None:
    """The predictor already loaded for ``sha256`` and ``threads``, or ``None``; never loads."""
    return _cache.peek(sha256, threads)


def clear_predictor_cache() -> None:
    """Forget every loaded model (the next request loads and verifies its artifact again)."""
    _cache.clear()


# --- out-of-distribution check ------------------------------------------------------------------


@dataclass(frozen=True)
class InputStats:
    """Where the training images' mean intensities lie, per channel.

    Attributes:
        mean: ``(C,)`` mean over the training images of each image's mean intensity (0-255).
        std: ``(C,)`` standard deviation of the same, at least 1 intensity level.
        count: Number of training images they were computed from.
        colour: Whether most training images are in colour (their channels differ); ``False``
            for one channel, or grey images stored as three equal channels.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int
    colour: bool = False

    @classmethod
    def from_images(cls, images: np.ndarray) -> InputStats:
        """Statistics of ``uint8`` images ``(N, H, W, C)`` (the training split)."""
        images = np.asarray(images)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty (N, H, W, C) array. Received: shape={images.shape}"
            )
        means = images.mean(axis=(1, 2), dtype=np.float64)  # (N, C)
        colour = False
        if images.shape[-1] == 3:
            grey = ((images[..., 0] == images[..., 1]) & (images[..., 1] == images[..., 2])).all(
                axis=(1, 2))
            colour = bool(grey.mean() < 0.5)
        # A floor of one intensity level keeps a near-constant dataset from flagging everything.
        return cls(means.mean(axis=0), np.maximum(means.std(axis=0), 1.0), len(images), colour)

    def zscores(self, images: np.ndarray) -> np.ndarray:
        """``(N, C)`` distance of each image's mean intensity from the training images', in std units."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != len(self.mean):
            raise ValueError(
                f"images must have shape (N, H, W, {len(self.mean)}), as the training images. "
                f"Received: shape={images.shape}"
            )
        means = images.mean(axis=(1, 2), dtype=np.float64)
        return (means - self.mean) / self.std

    def warnings(self, images: np.ndarray, *, threshold: float = INTENSITY_Z_THRESHOLD) -> list[list[str]]:
        """For each image, a warning when its brightness is unlike the training images'."""
        channel_names = ["gray"] if len(self.mean) == 1 else ["red", "green", "blue"][: len(self.mean)]
        result = []
        for z in self.zscores(images):
            worst = int(np.argmax(np.abs(z)))
            if abs(z[worst]) > threshold:
                direction = "brighter" if z[worst] > 0 else "darker"
                channel = "" if len(self.mean) == 1 else f" in the {channel_names[worst]} channel"
                result.append([
                    f"the image is much {direction}{channel} than the training images "
                    f"(z = {z[worst]:+.1f}); it may not be the kind of image this model knows"
                ])
            else:
                result.append([])
        return result

    def as_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count,
                "colour": self.colour}

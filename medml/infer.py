"""Serving a trained model: load once, predict through one compiled function, check the inputs.

A :class:`Predictor` wraps a ``.keras`` file loaded with ``safe_mode=True`` (no arbitrary code
from the file runs) and calls the model through a ``tf.function`` with a fixed input signature:
one trace serves every batch size, and a request costs one graph call, not the per-call setup of
``model.predict``. :func:`get_predictor` keeps a few predictors per process, keyed by the
artifact's sha256, so a model is read from disk and traced once.

:class:`InputStats` holds per-channel statistics of the training images' mean intensities; an
upload far outside them is flagged, since a classifier has to answer even for an image unlike
anything it was trained on.
"""

from __future__ import annotations

import logging
import os
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
    """

    probabilities: np.ndarray
    spread: np.ndarray


class Predictor:
    """A loaded model and its compiled prediction function.

    Args:
        model: A model from :mod:`medml.architectures` (``uint8`` ``(N, H, W, C)`` in, softmax
            out), or one loaded from its ``.keras`` file.
        warm_up: Trace the compiled function now, so the first request does not pay for it.
    """

    def __init__(self, model: keras.Model, *, warm_up: bool = True):
        shape = tuple(model.inputs[0].shape)
        if len(shape) != 4 or any(d is None for d in shape[1:]):
            raise ValueError(
                f"the model must take images of a fixed size (N, H, W, C). Received: input shape {shape}"
            )
        self.model = model
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in shape[1:])  # type: ignore[assignment]
        self.input_dtype = tf.as_dtype(model.inputs[0].dtype)
        self.num_classes = int(model.outputs[0].shape[-1])
        signature = [tf.TensorSpec((None, *self.input_shape), self.input_dtype, name="images")]
        self._predict = tf.function(self._forward, input_signature=signature, autograph=False)
        self._predict_tta = tf.function(self._forward_tta, input_signature=signature, autograph=False)
        self._explainer = None
        self._explainer_lock = threading.Lock()
        if warm_up:
            self.predict(np.zeros((1, *self.input_shape), dtype=self.input_dtype.as_numpy_dtype))

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, warm_up: bool = True) -> Predictor:
        """Load a ``.keras`` artifact safely (no Lambda layers or other code from the file)."""
        configure_cpu_threads()
        model = keras.models.load_model(Path(path), compile=False, safe_mode=True)
        return cls(model, warm_up=warm_up)

    def _forward(self, images: tf.Tensor) -> tf.Tensor:
        return tf.cast(self.model(images, training=False), tf.float32)

    def _forward_tta(self, images: tf.Tensor) -> tf.Tensor:
        views = [images, tf.reverse(images, axis=[2]), tf.reverse(images, axis=[1])]
        return tf.stack([self._forward(view) for view in views])  # (views, N, classes)

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

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities, ``float32`` ``(N, num_classes)``, for raw images ``(N, H, W, C)``."""
        images = self._checked(images)
        if len(images) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return self._predict(tf.convert_to_tensor(images)).numpy()

    def predict_tta(self, images: np.ndarray) -> TTAResult:
        """Probabilities averaged over the image and its two mirror images, with their spread."""
        images = self._checked(images)
        if len(images) == 0:
            empty = np.zeros((0, self.num_classes), dtype=np.float32)
            return TTAResult(empty, np.zeros((0,), dtype=np.float32))
        views = self._predict_tta(tf.convert_to_tensor(images)).numpy()
        mean = views.mean(axis=0)
        predicted = mean.argmax(axis=1)
        chosen = views[:, np.arange(len(images)), predicted]  # (views, N)
        return TTAResult(mean.astype(np.float32), chosen.std(axis=0).astype(np.float32))

    @property
    def explainer(self):
        """The model's Grad-CAM (see :mod:`medml.explain`), built and compiled on first use."""
        with self._explainer_lock:
            if self._explainer is None:
                from medml.explain import GradCam

                self._explainer = GradCam(self.model)
            return self._explainer


class _PredictorCache:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[str, Predictor] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | os.PathLike, sha256: str) -> Predictor:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return self._items[sha256]
            # Loading under the lock: two requests for a new model load it once, and models
            # are loaded rarely enough that serialising the loads costs nothing noticeable.
            predictor = Predictor.from_file(path)
            self._items[sha256] = predictor
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            return predictor

    def peek(self, sha256: str) -> Predictor | None:
        with self._lock:
            return self._items.get(sha256)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_cache = _PredictorCache(PREDICTOR_CACHE_SIZE)


def get_predictor(path: str | os.PathLike, sha256: str) -> Predictor:
    """The process's predictor for an artifact, loading ``path`` the first time ``sha256`` is asked.

    The caller vouches that ``path`` holds the bytes with ``sha256``; later calls with the same
    hash return the loaded model without reading ``path``. The least recently used of more than
    :data:`PREDICTOR_CACHE_SIZE` models is dropped.
    """
    return _cache.get(path, sha256)


def cached_predictor(sha256: str) -> Predictor | None:
    """The predictor already loaded for ``sha256``, or ``None``; never loads anything."""
    return _cache.peek(sha256)


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
    """

    mean: np.ndarray
    std: np.ndarray
    count: int

    @classmethod
    def from_images(cls, images: np.ndarray) -> InputStats:
        """Statistics of ``uint8`` images ``(N, H, W, C)`` (the training split)."""
        images = np.asarray(images)
        if images.ndim != 4 or len(images) == 0:
            raise ValueError(
                f"images must be a non-empty (N, H, W, C) array. Received: shape={images.shape}"
            )
        means = images.mean(axis=(1, 2), dtype=np.float64)  # (N, C)
        # A floor of one intensity level keeps a near-constant dataset from flagging everything.
        return cls(means.mean(axis=0), np.maximum(means.std(axis=0), 1.0), len(images))

    def zscores(self, images: np.ndarray) -> np.ndarray:
        """``(N, C)`` distance of each image's mean intensity from the training images', in std units."""
        means = np.asarray(images).mean(axis=(1, 2), dtype=np.float64)
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
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "count": self.count}

"""Grad-CAM: which parts of an image drove a prediction.

Grad-CAM (Selvaraju et al., 2017) weights the feature maps of the last convolution by the average
gradient of a class's score with respect to them, keeps the positive part and scales it to 0-1.
The score is the class's logit, recomputed from the ``predictions`` layer's input and weights: the
softmax probability itself saturates near 1 for confident predictions, and its gradient, and so the
map, would vanish exactly where the model is surest.

:class:`GradCam` compiles the whole computation once per model as a ``tf.function``; the overlay
(:func:`overlay_png`) is drawn with a colour map in NumPy and encoded by Pillow.
"""

from __future__ import annotations

import io
import math

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

OUTPUT_LAYER = "predictions"
# Overlays are enlarged to about this many pixels on their longer side: a 28x28 image 8 times,
# a 224x224 one not at all (8 times would make a 1792x1792 PNG of several megabytes).
OVERLAY_DISPLAY_SIZE = 224
# Layers that are part of the preprocessing, not learned features.
_PREPROCESSING_LAYERS = frozenset({"rgb_to_grayscale"})

# Anchor colours of a "turbo"-like map from low (dark blue) to high (dark red) attention.
_COLOUR_ANCHORS = np.array([
    [48, 18, 59], [70, 107, 227], [40, 187, 236], [50, 241, 152], [164, 252, 60],
    [237, 208, 58], [251, 128, 34], [208, 47, 5], [122, 4, 3],
], dtype=np.float64)


def find_target_layer(model: keras.Model) -> keras.layers.Layer:
    """The layer whose feature maps Grad-CAM uses: the last ``Conv2D`` of the model.

    When a nested model that contains convolutions (a ``keras.applications`` backbone) comes after
    the last top-level ``Conv2D``, its output, the backbone's last feature map, is used instead.

    Raises:
        ValueError: when the model has no convolution, naming its layers.
    """
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Conv2D) and layer.name not in _PREPROCESSING_LAYERS:
            return layer
        if isinstance(layer, keras.Model) and any(
            isinstance(sub, keras.layers.Conv2D) for sub in _walk(layer)
        ):
            return layer
    raise ValueError(
        "Grad-CAM needs a convolutional layer. "
        f"Received: layers={[layer.name for layer in model.layers]}"
    )


def _walk(layer):
    for sub in getattr(layer, "layers", ()):
        yield sub
        yield from _walk(sub)


def _output_in_model(layer: keras.layers.Layer) -> keras.KerasTensor:
    """The tensor ``layer`` produces in the model it was called in.

    For a nested model, ``.output`` is the output of its own inner graph, which the outer model's
    inputs do not reach; the outer call's tensor is on the layer's first inbound node.
    """
    if isinstance(layer, keras.Model):
        return layer._inbound_nodes[0].output_tensors[0]
    return layer.output


class GradCam:
    """Grad-CAM for a classification model of :mod:`medml.architectures`.

    Args:
        model: The model; it must end in a ``Dense`` softmax layer named ``predictions``.
        layer_name: The layer whose feature maps to use; default :func:`find_target_layer`.
        warm_up: Trace the compiled function now, so the first explanation does not pay for it.
    """

    def __init__(self, model: keras.Model, *, layer_name: str | None = None, warm_up: bool = True):
        target = model.get_layer(layer_name) if layer_name else find_target_layer(model)
        head = model.get_layer(OUTPUT_LAYER)
        self.layer_name = target.name
        self.input_shape: tuple[int, int, int] = tuple(int(d) for d in model.inputs[0].shape[1:])  # type: ignore[assignment]
        self.num_classes = int(head.units)
        self._input_dtype = tf.as_dtype(model.inputs[0].dtype)
        self._features = keras.Model(
            model.inputs, [_output_in_model(target), head.input], name=f"{model.name}_gradcam"
        )
        self._head = head
        signature = [
            tf.TensorSpec((None, *self.input_shape), self._input_dtype, name="images"),
            tf.TensorSpec((None,), tf.int32, name="classes"),
        ]
        self._compute = tf.function(self._heatmaps, input_signature=signature, autograph=False)
        if warm_up:
            self.heatmaps(np.zeros((1, *self.input_shape), self._input_dtype.as_numpy_dtype), [0])

    def _heatmaps(self, images: tf.Tensor, classes: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            maps, pooled = self._features(images, training=False)
            tape.watch(maps)
            kernel = tf.cast(self._head.kernel, tf.float32)
            logits = tf.matmul(tf.cast(pooled, tf.float32), kernel)
            if self._head.use_bias:
                logits += tf.cast(self._head.bias, tf.float32)
            scores = tf.gather(logits, classes, axis=1, batch_dims=1)
        grads = tf.cast(tape.gradient(scores, maps), tf.float32)
        maps = tf.cast(maps, tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, K)
        cam = tf.nn.relu(tf.reduce_sum(weights * maps, axis=-1, keepdims=True))  # (N, h, w, 1)
        cam = tf.image.resize(cam, self.input_shape[:2], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
        # A map with no positive evidence stays 0 rather than dividing by zero.
        return tf.math.divide_no_nan(cam, peak)

    def heatmaps(self, images: np.ndarray, classes: np.ndarray | list[int]) -> np.ndarray:
        """Class-activation maps for ``images`` ``(N, H, W, C)`` and one class index per image.

        Returns:
            ``float32`` ``(N, H, W)`` in ``[0, 1]``, at the model's input size; 1 marks the place
            that most raised the class's score.
        """
        images = np.asarray(images)
        classes = np.asarray(classes, dtype=np.int32).reshape(-1)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(
                f"images must have shape (N, {', '.join(map(str, self.input_shape))}). "
                f"Received: shape={images.shape}"
            )
        if len(classes) != len(images):
            raise ValueError(
                f"one class per image is needed. Received: {len(images)} images, {len(classes)} classes"
            )
        if len(classes) and (classes.min() < 0 or classes.max() >= self.num_classes):
            raise ValueError(
                f"classes must be in [0, {self.num_classes}). Received: classes={classes.tolist()}"
            )
        if len(images) == 0:
            return np.zeros((0, *self.input_shape[:2]), dtype=np.float32)
        result = self._compute(
            tf.convert_to_tensor(images, dtype=self._input_dtype), tf.convert_to_tensor(classes)
        )
        return np.clip(result.numpy(), 0.0, 1.0)


def _interpolated_colours(values: np.ndarray) -> np.ndarray:
    position = values * (len(_COLOUR_ANCHORS) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(_COLOUR_ANCHORS) - 1)
    fraction = (position - low)[..., np.newaxis]
    colours = _COLOUR_ANCHORS[low] * (1 - fraction) + _COLOUR_ANCHORS[high] * fraction
    return np.rint(colours).astype(np.uint8)


# The map at 256 levels: a lookup per pixel instead of an interpolation, several times faster.
_COLOUR_TABLE = _interpolated_colours(np.linspace(0.0, 1.0, 256))


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """``uint8`` RGB ``(H, W, 3)`` of a ``[0, 1]`` map: dark blue (0) through yellow to dark red (1)."""
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    return _COLOUR_TABLE[np.rint(values * 255).astype(np.uint8)]


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
            scale: int | None = None) -> np.ndarray:
    """The image with its heatmap blended on top, enlarged for display.

    The image is enlarged with nearest-neighbour (its pixels stay visible as squares) and the
    heatmap bilinearly (it is a smooth field).

    Args:
        image: ``uint8`` ``(H, W, C)`` model input, ``C`` in ``{1, 3}``.
        heatmap: ``(H, W)`` in ``[0, 1]``.
        alpha: Weight of the heatmap colour.
        scale: Integer enlargement; by default the smallest that brings the longer side to
            :data:`OVERLAY_DISPLAY_SIZE` pixels (1 for images already that large).

    Returns:
        ``uint8`` RGB ``(H * scale, W * scale, 3)``.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.dtype != np.uint8 or image.shape[:2] != np.shape(heatmap):
        raise ValueError(
            f"image must be uint8 with the heatmap's height and width. "
            f"Received: image {image.dtype} {image.shape}, heatmap {np.shape(heatmap)}"
        )
    if scale is None:
        scale = max(1, math.ceil(OVERLAY_DISPLAY_SIZE / max(image.shape[:2])))
    if not 0 <= alpha <= 1 or scale < 1:
        raise ValueError(f"alpha must be in [0, 1] and scale >= 1. Received: {alpha=}, {scale=}")
    height, width = image.shape[:2]
    size = (width * scale, height * scale)
    base = Image.fromarray(image).convert("RGB").resize(size, Image.Resampling.NEAREST)
    field = Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colorize(np.asarray(field)))
    return np.asarray(Image.blend(base, colours, alpha))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
                scale: int | None = None) -> bytes:
    """PNG bytes of :func:`overlay`."""
    buffer = io.BytesIO()
    # Level 1: these small images gain almost nothing from harder compression, and it costs time.
    Image.fromarray(overlay(image, heatmap, alpha=alpha, scale=scale)).save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()

"""Data augmentation for training batches, and feature-wise normalization.

Random transforms (:func:`build_augmenter`) run in the ``tf.data`` pipeline on batches of raw
images and return raw images again: ``uint8``, same shape, values rounded and clipped to
0-255. The model's own preprocessing (rescaling, resizing, channel handling, see
:mod:`medml.architectures.preprocessing`) then applies unchanged, and an augmented image is always
a valid image, the same kind of input the model gets at serving time.

All geometric transforms of one image (rotation, random multiple of 90 degrees, flips, zoom,
shifts) are composed into a single affine map and applied with one bilinear resampling, filling
uncovered pixels with the nearest edge pixel as Keras' ``ImageDataGenerator`` does. Composing
avoids blurring the image once per transform. Rotations by multiples of 90 degrees and flips
alone map pixel centres onto pixel centres, so they move pixels without interpolating them.

Randomness is stateless: given a batch and a ``seed`` tensor the output is fixed, which keeps
training reproducible when the pipeline runs batches in parallel and when a run resumes from a
checkpoint.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from medml.architectures.preprocessing import IMAGENET_MEAN_RGB
from medml.config import AugmentationConfig

# Per-channel standard deviations of ImageNet on the 0-255 scale (RGB), the spread of the inputs
# the official "caffe" ResNet50/VGG16 weights saw after their mean subtraction.
IMAGENET_STD_RGB: tuple[float, float, float] = (58.395, 57.12, 57.375)
# Channels whose spread is below one grey level are treated as having that spread, so nearly
# constant channels are not blown up into noise.
MIN_CHANNEL_STD = 1.0

# Sine and cosine of k * 90 degrees, exact, for k = 0..3.
_QUARTER_COS = (1.0, 0.0, -1.0, 0.0)
_QUARTER_SIN = (0.0, 1.0, 0.0, -1.0)


class Augmenter:
    """Random transforms of a batch of raw images, configured by an :class:`AugmentationConfig`.

    Call it with ``images`` (``(B, H, W, C)``, any real dtype holding 0-255 values) and
    optionally ``seed``, a ``[2]`` integer tensor: the same seed gives the same output (use a
    different seed per batch and epoch). Without ``seed`` the randomness comes from an internal
    generator seeded with the constructor's ``seed``, so a sequence of calls is reproducible.
    Returns ``uint8`` images of the same shape.
    """

    def __init__(self, aug: AugmentationConfig, seed: int):
        self.aug = aug
        self.seed = int(seed)
        self._generator: tf.random.Generator | None = None
        self._geometric = bool(
            aug.rotation_range
            or aug.width_shift_range
            or aug.height_shift_range
            or aug.zoom_range
            or aug.horizontal_flip
            or aug.vertical_flip
            or aug.rotate90
        )

    def __call__(self, images: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        images = tf.convert_to_tensor(images)
        if seed is None:
            if self._generator is None:
                self._generator = tf.random.Generator.from_seed(self.seed)
            seed = self._generator.make_seeds(1)[:, 0]
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=10)
        x = tf.cast(images, tf.float32)
        if self._geometric:
            x = self._transform(x, seeds[:7])
        if self.aug.brightness_range:
            factor = self._uniform(seeds[7], tf.shape(x)[:1], self.aug.brightness_range, 1.0)
            x *= factor[:, None, None, None]
        if self.aug.contrast_range:
            factor = self._uniform(seeds[8], tf.shape(x)[:1], self.aug.contrast_range, 1.0)
            mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
            x = (x - mean) * factor[:, None, None, None] + mean
        return tf.cast(tf.round(tf.clip_by_value(x, 0.0, 255.0)), tf.uint8)

    @staticmethod
    def _uniform(seed: tf.Tensor, shape: tf.Tensor, half_width: float, centre: float = 0.0):
        return tf.random.stateless_uniform(
            shape, seed, minval=centre - half_width, maxval=centre + half_width
        )

    def _transform(self, x: tf.Tensor, seeds: tf.Tensor) -> tf.Tensor:
        aug = self.aug
        batch = tf.shape(x)[0]
        height, width = x.shape[1], x.shape[2]
        dynamic_hw = tf.shape(x)[1:3]
        h = tf.cast(dynamic_hw[0], tf.float32)
        w = tf.cast(dynamic_hw[1], tf.float32)
        shape = tf.reshape(batch, [1])
        ones = tf.ones(shape, tf.float32)

        theta = self._uniform(seeds[0], shape, math.radians(aug.rotation_range))
        if aug.rotate90:
            # A quarter turn of a non-square image would leave parts of the output uncovered:
            # those get only half turns.
            square = height is not None and width is not None and height == width
            quarters = tf.random.stateless_uniform(
                shape, seeds[1], minval=0, maxval=4 if square else 2, dtype=tf.int32
            )
            if not square:
                quarters *= 2
            cos_k = tf.gather(tf.constant(_QUARTER_COS), quarters)
            sin_k = tf.gather(tf.constant(_QUARTER_SIN), quarters)
        else:
            cos_k, sin_k = ones, tf.zeros(shape, tf.float32)
        # Rotation by theta followed by the quarter turns: R(theta) @ R(k * 90 degrees).
        cos_t, sin_t = tf.cos(theta), tf.sin(theta)
        r00 = cos_t * cos_k - sin_t * sin_k
        r01 = -(sin_t * cos_k + cos_t * sin_k)
        r10 = -r01
        r11 = r00

        scale_x = self._uniform(seeds[2], shape, aug.zoom_range, 1.0) if aug.zoom_range else ones
        scale_y = self._uniform(seeds[3], shape, aug.zoom_range, 1.0) if aug.zoom_range else ones
        if aug.horizontal_flip:
            scale_x *= self._random_sign(seeds[4], shape)
        if aug.vertical_flip:
            scale_y *= self._random_sign(seeds[5], shape)
        shift_seeds = tf.random.experimental.stateless_split(seeds[6], num=2)
        shift_x = self._uniform(shift_seeds[0], shape, aug.width_shift_range) * w
        shift_y = self._uniform(shift_seeds[1], shape, aug.height_shift_range) * h

        # The transform maps each output pixel (x, y) to the input position it samples:
        # input = centre + R @ diag(scale_x, scale_y) @ (output - centre) + shift.
        a00, a01 = r00 * scale_x, r01 * scale_y
        a10, a11 = r10 * scale_x, r11 * scale_y
        cx, cy = (w - 1.0) / 2.0, (h - 1.0) / 2.0
        zeros = tf.zeros(shape, tf.float32)
        transforms = tf.stack(
            [
                a00,
                a01,
                cx + shift_x - a00 * cx - a01 * cy,
                a10,
                a11,
                cy + shift_y - a10 * cx - a11 * cy,
                zeros,
                zeros,
            ],
            axis=1,
        )
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=x,
            transforms=transforms,
            output_shape=tf.cast(dynamic_hw, tf.int32),
            fill_value=tf.constant(0.0, tf.float32),
            interpolation="BILINEAR",
            fill_mode="NEAREST",
        )

    @staticmethod
    def _random_sign(seed: tf.Tensor, shape: tf.Tensor) -> tf.Tensor:
        coin = tf.random.stateless_uniform(shape, seed, minval=0, maxval=2, dtype=tf.int32)
        return tf.cast(coin * 2 - 1, tf.float32)


def build_augmenter(aug: AugmentationConfig, seed: int) -> Augmenter | None:
    """An :class:`Augmenter` for ``aug``, or ``None`` when no random transform is switched on.

    ``featurewise_normalization`` is not a random transform and is not handled here; see
    :func:`add_featurewise_normalization`.
    """
    if not (aug.enabled and aug.has_random_transforms):
        return None
    return Augmenter(aug, seed)


def channel_statistics(images: np.ndarray, chunk_size: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``images`` (``(N, H, W, C)``), in float64.

    Computed chunk by chunk, so a large ``uint8`` array is never copied to floats as a whole.
    """
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty (N, H, W, C) array. Received: {images.shape}")
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), chunk_size):
        chunk = images[start : start + chunk_size].reshape(-1, channels).astype(np.float64)
        total += chunk.sum(axis=0)
        total_sq += np.square(chunk).sum(axis=0)
    count = images.size // channels
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    return mean, std


def add_featurewise_normalization(model: keras.Model, train_images: np.ndarray) -> keras.Model:
    """Put feature-wise normalization, measured on ``train_images``, in front of ``model``.

    This is Keras' ``ImageDataGenerator(featurewise_center=True,
    featurewise_std_normalization=True)`` made part of the model: every channel is standardised
    with the training split's mean and standard deviation, ``z = (x - mean) / std``, so that the
    saved model normalises every input, at evaluation and at serving, exactly as in training.

    The new first layer, ``featurewise_normalization`` (a ``keras.layers.Normalization``),
    outputs ``z`` expressed in the units the model's own preprocessing expects:

    * models that rescale 0-255 to 0-1 receive ``255 * z``, so after their rescaling they see
      ``z`` itself, as with the report's ``ImageDataGenerator(rescale=1/255, featurewise_...)``;
    * models with ImageNet "caffe" preprocessing (layer ``imagenet_normalize``) receive
      ``imagenet_mean + z * imagenet_std``, so the backbone sees standardised images with the
      spread its ImageNet weights were trained on.

    Returns:
        A flat functional model with the same layers (new objects, same names and weights) after
        the normalization layer, taking ``uint8`` images of the same shape.
    """
    input_shape = tuple(model.input.shape[1:])
    channels = int(input_shape[-1])
    mean, std = channel_statistics(train_images)
    if mean.shape != (channels,):
        raise ValueError(
            f"train_images have {mean.shape[0]} channels but the model takes {channels}."
        )
    std = np.maximum(std, MIN_CHANNEL_STD)
    target_mean, target_std = _target_statistics(model, channels)
    # Normalization computes (x - m) / s; choose m, s so that it yields target_mean + z * target_std.
    layer_std = std / target_std
    layer_mean = mean - target_mean * layer_std
    inputs = keras.Input(shape=input_shape, dtype=model.input.dtype, name=model.input.name)
    normalized = keras.layers.Normalization(
        axis=-1,
        mean=layer_mean.tolist(),
        variance=np.square(layer_std).tolist(),
        dtype="float32",
        name="featurewise_normalization",
    )(inputs)
    return _rebuild_on(model, inputs, normalized)


def _target_statistics(model: keras.Model, channels: int) -> tuple[np.ndarray, np.ndarray]:
    if any(layer.name == "imagenet_normalize" for layer in model.layers):
        mean = np.asarray(IMAGENET_MEAN_RGB)
        std = np.asarray(IMAGENET_STD_RGB)
        if channels == 1:  # the model repeats the single channel to RGB after this layer
            mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
        return mean, std
    return np.zeros(channels), np.full(channels, 255.0)


def _rebuild_on(
    model: keras.Model, inputs: keras.KerasTensor, features: keras.KerasTensor
) -> keras.Model:
    """Re-create ``model``'s layers on ``features`` and return ``Model(inputs, outputs)``.

    The layers are cloned rather than shared, so every layer of the result has a single
    inbound node and ``layer.output`` (used e.g. by Grad-CAM) refers to the new graph.
    """
    outputs: dict[str, keras.KerasTensor] = {}

    def call_and_record(layer, *args, **kwargs):
        result = layer(*args, **kwargs)
        outputs[layer.name] = result
        return result

    if len(model.outputs) != 1:
        raise ValueError(f"Expected a model with one output. Received: {len(model.outputs)}")
    output_layer = next(layer for layer in model.layers if layer.output is model.outputs[0])
    keras.models.clone_model(model, input_tensors=features, call_function=call_and_record)
    rebuilt = keras.Model(inputs, outputs[output_layer.name], name=model.name)
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        rebuilt.get_layer(layer.name).set_weights(layer.get_weights())
    return rebuilt

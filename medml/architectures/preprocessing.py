"""Preprocessing that lives inside every model.

Each architecture starts with :func:`preprocessing_block`, so a model always takes raw ``uint8``
images at the dataset's native size. Training, evaluation and serving then cannot disagree about
scaling, resizing or channel handling: whoever holds the ``.keras`` file holds the preprocessing.

Only built-in Keras layers are used, so saved models reload with ``keras.models.load_model``
without importing this package first.
"""

from __future__ import annotations

from typing import Literal

import keras
import numpy as np

PreprocessingMode = Literal["unit", "imagenet_caffe"]

PREPROCESSING_MODES: tuple[str, ...] = ("unit", "imagenet_caffe")

# Per-channel means of ImageNet in RGB order, on the 0-255 scale. The official Keras ResNet50 and
# VGG16 weights were trained on "caffe"-style inputs: 0-255 values, BGR order, these means
# subtracted, no division by a standard deviation.
IMAGENET_MEAN_RGB: tuple[float, float, float] = (123.68, 116.779, 103.939)

# ITU-R BT.601 luma weights, the same ones PIL uses for ``Image.convert("L")``.
LUMINANCE_WEIGHTS_RGB: tuple[float, float, float] = (0.299, 0.587, 0.114)


def image_input(input_shape: tuple[int, int, int], *, name: str = "image") -> keras.KerasTensor:
    """Create the model input: raw ``uint8`` images of shape ``(H, W, C)``.

    Args:
        input_shape: ``(height, width, channels)`` of the dataset's images.
        name: Name of the input layer.

    Returns:
        A symbolic ``uint8`` tensor to build a functional model on.
    """
    return keras.Input(shape=tuple(input_shape), dtype="uint8", name=name)


def preprocessing_block(
    x: keras.KerasTensor,
    *,
    target_size: tuple[int, int] | None = None,
    target_channels: int | None = None,
    mode: PreprocessingMode = "unit",
) -> keras.KerasTensor:
    """Turn raw ``uint8`` images into what an architecture's first layer expects.

    The steps, each a named built-in layer, are:

    1. ``rescale``: cast to float and scale. ``mode="unit"`` maps 0-255 to 0-1;
       ``mode="imagenet_caffe"`` keeps 0-255 (the per-channel means are subtracted in step 4).
    2. ``resize``: bilinear resize to ``target_size``, only when it differs from the input size.
    3. ``grayscale_to_rgb`` (repeat the single channel three times) or ``rgb_to_grayscale``
       (fixed luminance weights), only when ``target_channels`` differs from the input's.
    4. ``imagenet_normalize``: subtract the ImageNet RGB means (``mode="imagenet_caffe"`` only).

    Scaling before resizing gives the same result as the other way round (bilinear interpolation
    is affine) and lets the resize work on floats. Channel conversion comes after resizing so a
    grayscale image is resized once rather than three times.

    Args:
        x: ``uint8`` image tensor of shape ``(batch, H, W, C)`` with ``C`` in ``{1, 3}``.
        target_size: ``(height, width)`` the architecture needs, or ``None`` to keep the input
            size.
        target_channels: ``1`` or ``3``, or ``None`` to keep the input's channels.
        mode: ``"unit"`` or ``"imagenet_caffe"`` (see above). ``"imagenet_caffe"`` produces
            3 channels in RGB order; :func:`medml.architectures.resnet.resnet50` and
            :func:`medml.architectures.vgg.vgg16` reorder their first convolution's kernel so it
            accepts RGB instead of the BGR order the official weights were trained on.

    Returns:
        A float tensor ``(batch, target_H, target_W, target_C)``.
    """
    if mode not in PREPROCESSING_MODES:
        raise ValueError(f"mode must be one of {PREPROCESSING_MODES}. Received: mode={mode!r}")
    if target_channels not in (None, 1, 3):
        raise ValueError(
            f"target_channels must be None, 1 or 3. Received: target_channels={target_channels}"
        )
    if mode == "imagenet_caffe" and target_channels not in (None, 3):
        raise ValueError(
            f"mode='imagenet_caffe' needs 3 channels. Received: target_channels={target_channels}"
        )
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]

    scale = 1.0 / 255.0 if mode == "unit" else 1.0
    x = keras.layers.Rescaling(scale=scale, name="rescale")(x)

    if target_size is not None and tuple(target_size) != (height, width):
        x = keras.layers.Resizing(
            int(target_size[0]), int(target_size[1]), interpolation="bilinear", name="resize"
        )(x)

    if mode == "imagenet_caffe":
        target_channels = 3
    if target_channels is not None and target_channels != channels:
        if target_channels == 3:
            x = keras.layers.Concatenate(axis=-1, name="grayscale_to_rgb")([x, x, x])
        else:
            x = _rgb_to_grayscale(x)

    if mode == "imagenet_caffe":
        offset = -np.asarray(IMAGENET_MEAN_RGB, dtype="float32")
        x = keras.layers.Rescaling(scale=1.0, offset=offset, name="imagenet_normalize")(x)
    return x


def _rgb_to_grayscale(x: keras.KerasTensor) -> keras.KerasTensor:
    # A 1x1 convolution with fixed luminance weights: a built-in layer (so saved models reload
    # without custom objects) that is frozen at creation. Setting ``trainable = True`` on the
    # whole model would unfreeze it too; it then starts from, and stays close to, luminance.
    kernel = np.asarray(LUMINANCE_WEIGHTS_RGB, dtype="float32").reshape(1, 1, 3, 1)
    layer = keras.layers.Conv2D(
        1,
        kernel_size=1,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant(kernel),
        trainable=False,
        name="rgb_to_grayscale",
    )
    return layer(x)

"""Argument validation and building blocks shared by the architecture families."""

from __future__ import annotations

import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import keras

from medml.architectures.errors import PretrainedWeightsUnavailableError

MIN_INPUT_SIZE = 8
SUPPORTED_CHANNELS = (1, 3)


def validate_input_shape(
    input_shape: Sequence[int], *, min_size: int = MIN_INPUT_SIZE
) -> tuple[int, int, int]:
    """Check ``input_shape`` is ``(H, W, C)`` with ``H, W >= min_size`` and ``C`` in ``{1, 3}``.

    Args:
        input_shape: The shape of one raw image, channels last.
        min_size: The smallest height and width accepted.

    Returns:
        ``input_shape`` as a tuple of three Python ints.

    Raises:
        ValueError: describing what was received.
    """
    if isinstance(input_shape, str | bytes) or not isinstance(input_shape, Sequence):
        raise ValueError(
            "input_shape must be a tuple (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    if len(input_shape) != 3:
        raise ValueError(
            "input_shape must have 3 entries (height, width, channels). "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if not all(_is_int(d) for d in input_shape):
        raise ValueError(
            f"input_shape entries must be integers. Received: input_shape={tuple(input_shape)}"
        )
    height, width, channels = (int(d) for d in input_shape)
    if channels not in SUPPORTED_CHANNELS:
        raise ValueError(
            "input_shape must have 1 (grayscale) or 3 (RGB) channels. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    if height < min_size or width < min_size:
        raise ValueError(
            f"input_shape height and width must be >= {min_size}. "
            f"Received: input_shape={tuple(input_shape)}"
        )
    return height, width, channels


def validate_num_classes(num_classes: int) -> int:
    """Check ``num_classes`` is an integer >= 2 and return it as an int."""
    if not _is_int(num_classes) or num_classes < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2. Received: num_classes={num_classes!r}"
        )
    return int(num_classes)


def validate_dropout(dropout: float | None, *, default: float) -> float:
    """Return ``dropout`` (or ``default`` when it is ``None``) after checking ``0 <= d < 1``."""
    if dropout is None:
        return default
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout < 1:
        raise ValueError(f"dropout must be a number in [0, 1). Received: dropout={dropout!r}")
    return float(dropout)


def validate_weight_decay(weight_decay: float) -> float:
    """Check ``weight_decay`` is a non-negative number and return it as a float."""
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, numbers.Real)
        or weight_decay < 0
    ):
        raise ValueError(
            f"weight_decay must be a number >= 0. Received: weight_decay={weight_decay!r}"
        )
    return float(weight_decay)


def kernel_regularizer(weight_decay: float) -> keras.regularizers.Regularizer | None:
    """An L2 kernel regularizer of strength ``weight_decay``, or ``None`` when it is 0."""
    return keras.regularizers.L2(weight_decay) if weight_decay > 0 else None


def classification_head(
    x: keras.KerasTensor,
    *,
    num_classes: int,
    dropout: float = 0.0,
    weight_decay: float = 0.0,
) -> keras.KerasTensor:
    """Optional dropout, then the softmax layer every architecture ends with.

    The output layer is named ``predictions`` and computes in ``float32`` so probabilities stay
    well-formed under a mixed-precision policy.

    Args:
        x: Flat features ``(batch, features)``.
        num_classes: Number of output probabilities.
        dropout: Dropout rate before the output layer; ``0`` adds no layer.
        weight_decay: L2 strength on the output kernel.

    Returns:
        Softmax probabilities ``(batch, num_classes)``.
    """
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.layers.Dense(
        num_classes,
        activation="softmax",
        kernel_regularizer=kernel_regularizer(weight_decay),
        dtype="float32",
        name="predictions",
    )(x)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_input_size(input_size: int, *, minimum: int) -> int:
    """Check the square size an architecture resizes to is an integer >= ``minimum``."""
    if not _is_int(input_size) or input_size < minimum:
        raise ValueError(
            f"input_size must be an integer >= {minimum}. Received: input_size={input_size!r}"
        )
    return int(input_size)


SCRATCH_BN_MOMENTUM = 0.9


def imagenet_backbone(
    x: keras.KerasTensor,
    *,
    application: Callable[..., keras.Model],
    name: str,
    first_conv: str,
    pretrained_weights: str | os.PathLike | None,
) -> keras.KerasTensor:
    """Run ``x`` through a ``keras.applications`` model without its classifier.

    Args:
        x: Preprocessed images, 3 channels in RGB order with the ImageNet means subtracted
            (``preprocessing_block(..., mode="imagenet_caffe")``), already at the backbone's
            input size.
        application: ``keras.applications.ResNet50``, ``keras.applications.VGG16``, ...
        name: Name of the nested backbone model; must start with ``"backbone"`` so that
            ``set_backbone_trainable`` finds it.
        first_conv: Name of the backbone's first convolution.
        pretrained_weights: Local path of the official "notop" weights file, or ``None`` for
            random initialisation. Never ``"imagenet"``: that would download.

    Returns:
        The backbone's feature map.
    """
    if pretrained_weights is not None and not Path(pretrained_weights).is_file():
        raise PretrainedWeightsUnavailableError(
            f"Pretrained weights file not found. Received: pretrained_weights={pretrained_weights}"
        )
    backbone = application(
        include_top=False,
        weights=str(pretrained_weights) if pretrained_weights is not None else None,
        input_shape=tuple(x.shape[1:]),
        name=name,
    )
    if pretrained_weights is None:
        # From scratch, Keras' BatchNormalization momentum of 0.99 leaves the running statistics
        # far from the batch statistics for the first few thousand steps, and inference with them
        # collapses to one class (the kind of result that scores below the majority-class rate).
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = SCRATCH_BN_MOMENTUM
        return backbone(x)
    # The official weights were trained on BGR images. Reversing the first kernel along its
    # input-channel axis makes the convolution take RGB and give exactly the same result, with
    # no extra layer in the graph.
    conv = backbone.get_layer(first_conv)
    kernel, *rest = conv.get_weights()
    conv.set_weights([kernel[:, :, ::-1, :], *rest])
    # Pretrained BatchNormalization statistics stay fixed even when the backbone is unfrozen for
    # fine-tuning, as the Keras transfer-learning guide recommends. A frozen BatchNormalization
    # runs in inference mode; calling the backbone with training=False is not enough, since a
    # functional model called in training passes training=True down to its nested layers.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return backbone(x, training=False)

"""A compact VGG-style CNN for 28x28 MedMNIST images, sized to train quickly on a CPU.

Design (not from the report; this is the platform's own fast baseline):

* three stages of two ``Conv3x3 -> BatchNorm -> ReLU`` units with ``width``, ``2 * width`` and
  ``4 * width`` filters, 2x2 max-pooling between stages (28 -> 14 -> 7);
* global average pooling, dropout, softmax.

The convolutions have no bias because the BatchNorm right after them has its own offset. The
network runs at the dataset's native resolution: there is no resize, and global average pooling
lets it take any input size >= 8. At 28x28 RGB, ``width=32`` costs about 30 M multiply-adds
(about 60 MFLOPs) per image with about 0.29 M parameters; ``width=64`` is four times both.
"""

from __future__ import annotations

import keras

from medml.architectures.common import (
    classification_head,
    kernel_regularizer,
    validate_dropout,
    validate_input_shape,
    validate_num_classes,
    validate_weight_decay,
)
from medml.architectures.preprocessing import image_input, preprocessing_block

DEFAULT_DROPOUT = 0.3
NUM_STAGES = 3
CONVS_PER_STAGE = 2


def compact_cnn_family(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 32,
    dropout: float | None = None,
    weight_decay: float = 0.0,
    name: str = "compact_cnn",
) -> keras.Model:
    """Build the compact CNN.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2).
        width: Filters of the first stage; the later stages use ``2 * width`` and ``4 * width``.
        dropout: Dropout before the output layer; ``None`` means 0.3.
        weight_decay: L2 strength on every convolution and dense kernel.
        name: Model name.

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape = validate_input_shape(input_shape)
    num_classes = validate_num_classes(num_classes)
    dropout = validate_dropout(dropout, default=DEFAULT_DROPOUT)
    weight_decay = validate_weight_decay(weight_decay)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer. Received: width={width!r}")

    inputs = image_input(input_shape)
    x = preprocessing_block(inputs, mode="unit")
    for stage in range(1, NUM_STAGES + 1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(2, name=f"stage{stage}_pool")(x)
        filters = width * 2 ** (stage - 1)
        for unit in range(1, CONVS_PER_STAGE + 1):
            prefix = f"stage{stage}_conv{unit}"
            x = keras.layers.Conv2D(
                filters,
                3,
                padding="same",
                use_bias=False,
                kernel_initializer="he_normal",
                kernel_regularizer=kernel_regularizer(weight_decay),
                name=prefix,
            )(x)
            # Momentum 0.9 (not Keras' 0.99): short CPU runs of a few hundred steps per epoch
            # otherwise validate with running statistics that lag far behind the weights.
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name=name)


def compact_cnn(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 32,
    dropout: float | None = None,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The compact CNN with 32/64/128 filters. See :func:`compact_cnn_family`."""
    return compact_cnn_family(
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
        dropout=dropout,
        weight_decay=weight_decay,
        name="compact_cnn",
    )


def compact_cnn_wide(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    width: int = 64,
    dropout: float | None = None,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The compact CNN with 64/128/256 filters. See :func:`compact_cnn_family`."""
    return compact_cnn_family(
        input_shape=input_shape,
        num_classes=num_classes,
        width=width,
        dropout=dropout,
        weight_decay=weight_decay,
        name="compact_cnn_wide",
    )

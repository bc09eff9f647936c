"""The report's VGG16 for BreastMNIST."""

from __future__ import annotations

import os

import keras

from medml.architectures.common import (
    classification_head,
    imagenet_backbone,
    kernel_regularizer,
    validate_dropout,
    validate_input_shape,
    validate_input_size,
    validate_num_classes,
    validate_weight_decay,
)
from medml.architectures.preprocessing import image_input, preprocessing_block

# keras.applications.VGG16 refuses inputs smaller than 32x32; the report resized its 28x28
# images to this minimum.
VGG16_MIN_INPUT_SIZE = 32
VGG16_HEAD_UNITS = 256
VGG16_DEFAULT_DROPOUT = 0.5


def vgg16(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    pretrained_weights: str | os.PathLike | None = None,
    dropout: float | None = None,
    weight_decay: float = 0.0,
    input_size: int = VGG16_MIN_INPUT_SIZE,
    head_units: int = VGG16_HEAD_UNITS,
) -> keras.Model:
    """The report's VGG16 for BreastMNIST.

    Images are resized to ``input_size`` (32x32 by default, VGG16's minimum), grayscale is
    repeated to 3 channels, and pixels are normalised the way the official Keras ImageNet weights
    expect. They go through ``keras.applications.VGG16`` without its classifier (nested model
    ``backbone_vgg16``), global average pooling, a ``head_units``-wide ReLU layer, dropout and a
    softmax layer.

    Chosen here (not as in the report): the head. The original VGG16 head (two 4096-unit layers)
    would hold about 19 M weights on top of a 1x1x512 feature map: 32x32 inputs come out of the
    five poolings as a single position, so the features are only 512 numbers, and BreastMNIST
    has 546 training images. Global average pooling (identical to flattening at 32x32, and
    independent of ``input_size``), one 256-unit layer and dropout 0.5 keep the head at about
    0.13 M weights.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2); 2 for BreastMNIST.
        pretrained_weights: Local path of ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``
            or ``None`` for random initialisation.
        dropout: Dropout before the output layer; ``None`` means 0.5.
        weight_decay: L2 strength on the head's kernels (the backbone is left as Keras builds
            it).
        input_size: Side of the square the images are resized to (>= 32).
        head_units: Width of the hidden layer of the head.

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape = validate_input_shape(input_shape)
    num_classes = validate_num_classes(num_classes)
    dropout = validate_dropout(dropout, default=VGG16_DEFAULT_DROPOUT)
    weight_decay = validate_weight_decay(weight_decay)
    input_size = validate_input_size(input_size, minimum=VGG16_MIN_INPUT_SIZE)
    if isinstance(head_units, bool) or not isinstance(head_units, int) or head_units < 1:
        raise ValueError(
            f"head_units must be a positive integer. Received: head_units={head_units!r}"
        )

    inputs = image_input(input_shape)
    x = preprocessing_block(
        inputs, target_size=(input_size, input_size), target_channels=3, mode="imagenet_caffe"
    )
    x = imagenet_backbone(
        x,
        application=keras.applications.VGG16,
        name="backbone_vgg16",
        first_conv="block1_conv1",
        pretrained_weights=pretrained_weights,
    )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(
        head_units,
        activation="relu",
        kernel_regularizer=kernel_regularizer(weight_decay),
        name="fc1",
    )(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="vgg16")

"""Residual networks: the report's ResNet50 and a ResNet-18 adapted to 28x28 inputs."""

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

# The report tried 32, 50, 100, 150 and 224 pixels and settled on 100x100.
RESNET50_INPUT_SIZE = 100
# keras.applications.ResNet50 refuses inputs smaller than 32x32.
RESNET50_MIN_INPUT_SIZE = 32
RESNET50_DEFAULT_DROPOUT = 0.3

RESNET18_STAGE_FILTERS = (64, 128, 256, 512)
RESNET18_BLOCKS_PER_STAGE = 2


def resnet50(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    pretrained_weights: str | os.PathLike | None = None,
    dropout: float | None = None,
    weight_decay: float = 0.0,
    input_size: int = RESNET50_INPUT_SIZE,
) -> keras.Model:
    """The report's ResNet50 for BloodMNIST.

    Images are resized to ``input_size`` (100x100, the size the report settled on), converted to
    3 channels and normalised the way the official Keras ImageNet weights expect, then go through
    ``keras.applications.ResNet50`` without its classifier (nested model
    ``backbone_resnet50``), global average pooling, dropout and a softmax layer.

    Chosen here (not in the report): the head. The report does not describe it; global average
    pooling and one softmax layer is the standard Keras transfer-learning head, with dropout 0.3.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2); 8 for BloodMNIST.
        pretrained_weights: Local path of ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``
            or ``None`` for random initialisation.
        dropout: Dropout before the output layer; ``None`` means 0.3.
        weight_decay: L2 strength on the output kernel (the backbone is left as Keras builds it).
        input_size: Side of the square the images are resized to (>= 32).

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape = validate_input_shape(input_shape)
    num_classes = validate_num_classes(num_classes)
    dropout = validate_dropout(dropout, default=RESNET50_DEFAULT_DROPOUT)
    weight_decay = validate_weight_decay(weight_decay)
    input_size = validate_input_size(input_size, minimum=RESNET50_MIN_INPUT_SIZE)

    inputs = image_input(input_shape)
    x = preprocessing_block(
        inputs, target_size=(input_size, input_size), target_channels=3, mode="imagenet_caffe"
    )
    x = imagenet_backbone(
        x,
        application=keras.applications.ResNet50,
        name="backbone_resnet50",
        first_conv="conv1_conv",
        pretrained_weights=pretrained_weights,
    )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="resnet50")


def resnet18_28(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float | None = None,
    weight_decay: float = 0.0,
) -> keras.Model:
    """ResNet-18 adapted to 28x28 images, as in the MedMNIST v2 benchmark.

    The ImageNet stem (7x7 stride-2 convolution and 3x3 max-pooling, a 4x reduction) would turn
    a 28x28 image into 7x7 before the first residual block. Here the stem is a 3x3 stride-1
    convolution with 64 filters and no pooling; then four stages of two basic blocks with 64,
    128, 256 and 512 filters, stride 2 at the start of stages 2-4 (28 -> 14 -> 7 -> 4), global
    average pooling and a softmax layer. A block's shortcut is a 1x1 convolution with
    BatchNormalization when its shape changes, the identity otherwise. Convolutions have no bias
    (BatchNormalization follows each) and He-normal initialisation. The network runs at the
    native resolution, with no resize.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2).
        dropout: Dropout before the output layer; ``None`` means none (as in the benchmark).
        weight_decay: L2 strength on every kernel.

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape = validate_input_shape(input_shape)
    num_classes = validate_num_classes(num_classes)
    dropout = validate_dropout(dropout, default=0.0)
    weight_decay = validate_weight_decay(weight_decay)
    regularizer = kernel_regularizer(weight_decay)

    inputs = image_input(input_shape)
    x = preprocessing_block(inputs, mode="unit")
    x = _conv(x, 64, 3, strides=1, regularizer=regularizer, name="stem_conv")
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage, filters in enumerate(RESNET18_STAGE_FILTERS, start=1):
        for block in range(1, RESNET18_BLOCKS_PER_STAGE + 1):
            strides = 2 if stage > 1 and block == 1 else 1
            x = _basic_block(
                x,
                filters,
                strides=strides,
                regularizer=regularizer,
                name=f"stage{stage}_block{block}",
            )
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="resnet18_28")


def _conv(x, filters, kernel_size, *, strides, regularizer, name):
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=regularizer,
        name=name,
    )(x)


def _basic_block(x, filters, *, strides, regularizer, name):
    """Two 3x3 convolutions with BatchNormalization and a residual connection."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(
            x, filters, 1, strides=strides, regularizer=regularizer, name=f"{name}_shortcut_conv"
        )
        shortcut = keras.layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    x = _conv(x, filters, 3, strides=strides, regularizer=regularizer, name=f"{name}_conv1")
    x = keras.layers.BatchNormalization(name=f"{name}_bn1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = _conv(x, filters, 3, strides=1, regularizer=regularizer, name=f"{name}_conv2")
    x = keras.layers.BatchNormalization(name=f"{name}_bn2")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_out_relu")(x)

"""The four custom CNNs of the reproduced report (three architectures).

The report names layer counts, widths and activations but not every detail. What it leaves out
is chosen here and written beside each builder. All three rescale pixels to 0-1 inside the model;
the report's ``featurewise_center``/``featurewise_std_normalization`` was a property of its
``ImageDataGenerator`` pipeline, i.e. of training, and is not part of the architecture.

The report trained BreastMNIST's network twice, without augmentation (83%) and with it (77%).
That is one architecture, :func:`breast_cnn`; the two runs differ only in training configuration.
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

# blood_cnn_95: the report gives "3 convolutional layers", not their filters or kernels.
BLOOD_CNN_95_FILTERS = (32, 64, 128)
# "a dense layer with 786 neurons, which is derived from the image size (28X28 = 786)": 28 x 28 is
# in fact 784, but the report built 786 units, and that is what is reproduced.
BLOOD_CNN_95_DENSE_UNITS = (786, 512)

# blood_cnn_85: the report gives one Conv2D, not its filters or kernel.
BLOOD_CNN_85_FILTERS = 32
BLOOD_CNN_85_DENSE_UNITS = 100

# breast_cnn: the report gives "3 convolution layers with kernel regularizers" and "3 fully
# connected layers with batch normalization set with a momentum of 0.1", not widths or strengths.
BREAST_CNN_FILTERS = (32, 64, 128)
BREAST_CNN_DENSE_UNITS = (256, 128, 64)
BREAST_CNN_CONV_L2 = 1e-3
# Keras momentum: moving = momentum * moving + (1 - momentum) * batch. 0.1 makes the moving
# statistics follow the latest batches closely (PyTorch calls the same behaviour momentum=0.9).
# The report's value is reproduced as written, since it was a Keras model.
BREAST_CNN_BN_MOMENTUM = 0.1


def _validated(input_shape, num_classes, dropout, weight_decay, *, default_dropout=0.0):
    return (
        validate_input_shape(input_shape),
        validate_num_classes(num_classes),
        validate_dropout(dropout, default=default_dropout),
        validate_weight_decay(weight_decay),
    )


def blood_cnn_95(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float | None = None,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The report's best BloodMNIST network (95% test accuracy).

    Report: three convolutional layers with batch normalization after each, a dense layer of 786
    units, one of 512, and a softmax output; every layer but the output uses a sigmoid.

    Chosen here (not in the report): 3x3 kernels with 32, 64 and 128 filters, "same" padding,
    and a 2x2 max-pooling after each convolution's batch normalization (28 -> 14 -> 7 -> 3), so the
    flattened features (3 * 3 * 128 = 1152) keep the 786-unit layer to about 0.9 M weights. No
    dropout by default, as the report mentions none.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2); 8 for BloodMNIST.
        dropout: Dropout before the output layer; ``None`` means none.
        weight_decay: L2 strength on every kernel.

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape, num_classes, dropout, weight_decay = _validated(
        input_shape, num_classes, dropout, weight_decay
    )
    regularizer = kernel_regularizer(weight_decay)
    inputs = image_input(input_shape)
    x = preprocessing_block(inputs, mode="unit")
    for index, filters in enumerate(BLOOD_CNN_95_FILTERS, start=1):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="sigmoid",
            kernel_regularizer=regularizer,
            name=f"conv{index}",
        )(x)
        x = keras.layers.BatchNormalization(name=f"conv{index}_bn")(x)
        x = keras.layers.MaxPooling2D(2, name=f"conv{index}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(BLOOD_CNN_95_DENSE_UNITS, start=1):
        x = keras.layers.Dense(
            units, activation="sigmoid", kernel_regularizer=regularizer, name=f"dense{index}"
        )(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="blood_cnn_95")


def blood_cnn_85(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float | None = None,
    weight_decay: float = 0.0,
) -> keras.Model:
    """The report's second BloodMNIST network (85% test accuracy).

    Report: one Conv2D with ReLU, a 2x2 max-pooling, flatten, a dense layer of 100 ReLU units and
    a softmax output.

    Chosen here (not in the report): 32 filters of 3x3 with "valid" padding (Keras' default), so
    a 28x28 image gives 13 * 13 * 32 = 5408 features into the 100-unit layer. No dropout by
    default, as the report mentions none.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2); 8 for BloodMNIST.
        dropout: Dropout before the output layer; ``None`` means none.
        weight_decay: L2 strength on every kernel.

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape, num_classes, dropout, weight_decay = _validated(
        input_shape, num_classes, dropout, weight_decay
    )
    regularizer = kernel_regularizer(weight_decay)
    inputs = image_input(input_shape)
    x = preprocessing_block(inputs, mode="unit")
    x = keras.layers.Conv2D(
        BLOOD_CNN_85_FILTERS, 3, activation="relu", kernel_regularizer=regularizer, name="conv1"
    )(x)
    x = keras.layers.MaxPooling2D(2, name="conv1_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(
        BLOOD_CNN_85_DENSE_UNITS, activation="relu", kernel_regularizer=regularizer, name="dense1"
    )(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="blood_cnn_85")


def breast_cnn(
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    dropout: float | None = None,
    weight_decay: float = 0.0,
    conv_l2: float = BREAST_CNN_CONV_L2,
) -> keras.Model:
    """The report's BreastMNIST network (83% without augmentation, 77% with it).

    Report: three convolutional layers with L2 kernel regularizers, three fully connected layers
    each followed by batch normalization with momentum 0.1, and a softmax output.

    Chosen here (not in the report): 3x3 convolutions with 32, 64 and 128 filters, ReLU, "same"
    padding and a 2x2 max-pooling after each (28 -> 14 -> 7 -> 3); L2 strength ``1e-3`` on the
    convolution kernels; fully connected layers of 256, 128 and 64 ReLU units, each followed by
    its batch normalization. No dropout by default, as the report mentions none.

    Args:
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images; ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2); 2 for BreastMNIST.
        dropout: Dropout before the output layer; ``None`` means none.
        weight_decay: L2 strength on every kernel; on the convolutions it adds to ``conv_l2``.
        conv_l2: L2 strength on the convolution kernels (the report's kernel regularizers).

    Returns:
        A ``keras.Model`` from ``uint8`` images to class probabilities.
    """
    input_shape, num_classes, dropout, weight_decay = _validated(
        input_shape, num_classes, dropout, weight_decay
    )
    try:
        conv_l2 = validate_weight_decay(conv_l2)
    except ValueError:
        raise ValueError(f"conv_l2 must be a number >= 0. Received: conv_l2={conv_l2!r}") from None
    conv_regularizer = kernel_regularizer(conv_l2 + weight_decay)
    dense_regularizer = kernel_regularizer(weight_decay)
    inputs = image_input(input_shape)
    x = preprocessing_block(inputs, mode="unit")
    for index, filters in enumerate(BREAST_CNN_FILTERS, start=1):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            activation="relu",
            kernel_regularizer=conv_regularizer,
            name=f"conv{index}",
        )(x)
        x = keras.layers.MaxPooling2D(2, name=f"conv{index}_pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for index, units in enumerate(BREAST_CNN_DENSE_UNITS, start=1):
        x = keras.layers.Dense(
            units, activation="relu", kernel_regularizer=dense_regularizer, name=f"dense{index}"
        )(x)
        x = keras.layers.BatchNormalization(
            momentum=BREAST_CNN_BN_MOMENTUM, name=f"dense{index}_bn"
        )(x)
    outputs = classification_head(
        x, num_classes=num_classes, dropout=dropout, weight_decay=weight_decay
    )
    return keras.Model(inputs, outputs, name="breast_cnn")

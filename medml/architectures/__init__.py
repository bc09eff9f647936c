"""Registry of the image-classification architectures the platform can train.

Every architecture is a function that returns a ``keras.Model`` taking raw ``uint8`` images at
the dataset's native size (``(H, W, C)`` with ``C`` in ``{1, 3}``) and returning softmax
probabilities from a ``float32`` layer named ``predictions``. Rescaling, resizing and channel
conversion happen inside the model (see :mod:`medml.architectures.preprocessing`).

Typical use::

    from medml.architectures import build_model, list_architectures

    model = build_model("compact_cnn", input_shape=(28, 28, 3), num_classes=8)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from medml.architectures.common import (
    MIN_INPUT_SIZE,
    validate_input_shape,
    validate_num_classes,
)
from medml.architectures.compact import compact_cnn, compact_cnn_wide
from medml.architectures.errors import (
    PretrainedWeightsUnavailableError,
    UnknownArchitectureError,
)
from medml.architectures.report_cnns import blood_cnn_85, blood_cnn_95, breast_cnn
from medml.architectures.resnet import resnet18_28, resnet50
from medml.architectures.vgg import vgg16

__all__ = [
    "ARCHITECTURES",
    "BACKBONE_PREFIX",
    "WEIGHTS_DIR_ENV_VAR",
    "ArchitectureSpec",
    "PretrainedWeightsUnavailableError",
    "UnknownArchitectureError",
    "build_model",
    "count_parameters",
    "default_weights_dir",
    "get_architecture",
    "list_architectures",
    "resolve_pretrained_weights",
    "set_backbone_trainable",
]

WEIGHTS_DIR_ENV_VAR = "MEDML_WEIGHTS_DIR"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_WEIGHTS_DIR = PROJECT_ROOT / "var" / "weights"

# Layers (or nested models) whose name starts with this prefix hold pretrained ImageNet weights.
BACKBONE_PREFIX = "backbone"


@dataclass(frozen=True)
class ArchitectureSpec:
    """Description of one registered architecture.

    Attributes:
        name: Registry key, e.g. ``"resnet50"``.
        title: Human-readable name.
        description: One or two sentences for people choosing a model.
        family: Module the builder lives in, e.g. ``"resnet"``.
        builder: Callable ``(*, input_shape, num_classes, dropout, weight_decay, **options)``
            returning a ``keras.Model``; pretrained architectures also take
            ``pretrained_weights``.
        supports_pretrained: Whether ImageNet weights can be loaded into a backbone.
        min_size: Smallest input height/width accepted (the builder resizes internally when the
            architecture needs more).
        report_reference: Where the report describes this model and what it scored, or ``None``
            for models that are not from the report.
        default_input_hint: The data the model was designed for.
        pretrained_weights_file: File name of the official Keras ImageNet weights, for
            architectures that support them.
    """

    name: str
    title: str
    description: str
    family: str
    builder: Callable[..., keras.Model]
    supports_pretrained: bool = False
    min_size: int = MIN_INPUT_SIZE
    report_reference: str | None = None
    default_input_hint: str = ""
    pretrained_weights_file: str | None = None

    @property
    def options(self) -> dict[str, object]:
        """Extra keyword options of the builder with their defaults (e.g. ``width``)."""
        return _builder_options(self.builder)


_SPECS: tuple[ArchitectureSpec, ...] = (
    ArchitectureSpec(
        name="resnet50",
        title="ResNet50",
        description=(
            "keras.applications ResNet50 on images resized to 100x100, with global average "
            "pooling and a softmax head. Can start from local ImageNet weights."
        ),
        family="resnet",
        builder=resnet50,
        supports_pretrained=True,
        report_reference="Report Table 1 row 2: ResNet50, 15% accuracy on BloodMNIST",
        default_input_hint="BloodMNIST 28x28 RGB (resized to 100x100 inside the model)",
        pretrained_weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    ArchitectureSpec(
        name="vgg16",
        title="VGG16",
        description=(
            "keras.applications VGG16 on images resized to 32x32 (grayscale repeated to RGB), "
            "with a small 256-unit head. Can start from local ImageNet weights."
        ),
        family="vgg",
        builder=vgg16,
        supports_pretrained=True,
        report_reference="Report Table 1 row 1: VGG16, 71% accuracy on BreastMNIST",
        default_input_hint="BreastMNIST 28x28 grayscale (resized to 32x32 RGB inside the model)",
        pretrained_weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ),
    ArchitectureSpec(
        name="blood_cnn_95",
        title="Report CNN for BloodMNIST (95%)",
        description=(
            "Three sigmoid convolutions, each followed by batch normalization, then dense "
            "layers of 786 and 512 sigmoid units and a softmax output."
        ),
        family="report_cnns",
        builder=blood_cnn_95,
        report_reference="Report Table 2 row 1: 95% accuracy on BloodMNIST",
        default_input_hint="BloodMNIST 28x28 RGB",
    ),
    ArchitectureSpec(
        name="blood_cnn_85",
        title="Report CNN for BloodMNIST (85%)",
        description=(
            "One ReLU convolution and max-pooling, a 100-unit ReLU layer and a softmax output."
        ),
        family="report_cnns",
        builder=blood_cnn_85,
        report_reference="Report Table 2 row 2: 85% accuracy on BloodMNIST",
        default_input_hint="BloodMNIST 28x28 RGB",
    ),
    ArchitectureSpec(
        name="breast_cnn",
        title="Report CNN for BreastMNIST (83% / 77%)",
        description=(
            "Three L2-regularised convolutions, three fully connected layers each followed by "
            "batch normalization (momentum 0.1), and a softmax output."
        ),
        family="report_cnns",
        builder=breast_cnn,
        report_reference=(
            "Report Table 2 rows 3-4: 83% on BreastMNIST without augmentation, "
            "77% with augmentation"
        ),
        default_input_hint="BreastMNIST 28x28 grayscale",
    ),
    ArchitectureSpec(
        name="resnet18_28",
        title="ResNet-18 (28x28)",
        description=(
            "ResNet-18 with a 3x3 stride-1 stem and no max-pooling, as in the MedMNIST v2 "
            "benchmark, run at the native 28x28 resolution."
        ),
        family="resnet",
        builder=resnet18_28,
        default_input_hint="Any MedMNIST dataset at native 28x28, grayscale or RGB",
    ),
    ArchitectureSpec(
        name="compact_cnn",
        title="Compact CNN",
        description=(
            "Three stages of two 3x3 conv-BN-ReLU units (32/64/128 filters), global average "
            "pooling and dropout. Trains in minutes on a CPU at the native 28x28 resolution."
        ),
        family="compact",
        builder=compact_cnn,
        default_input_hint="Any MedMNIST dataset at native 28x28, grayscale or RGB",
    ),
    ArchitectureSpec(
        name="compact_cnn_wide",
        title="Compact CNN (wide)",
        description=(
            "The compact CNN with twice the filters (64/128/256): about four times the "
            "parameters and compute, for a little more accuracy."
        ),
        family="compact",
        builder=compact_cnn_wide,
        default_input_hint="Any MedMNIST dataset at native 28x28, grayscale or RGB",
    ),
)

ARCHITECTURES: dict[str, ArchitectureSpec] = {spec.name: spec for spec in _SPECS}


def list_architectures() -> list[ArchitectureSpec]:
    """All registered architectures, in registry order."""
    return list(ARCHITECTURES.values())


def get_architecture(name: str) -> ArchitectureSpec:
    """Look up an architecture by name.

    Raises:
        UnknownArchitectureError: when ``name`` is not registered; the message lists the valid
            names.
    """
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        valid = ", ".join(ARCHITECTURES)
        raise UnknownArchitectureError(
            f"Unknown architecture {name!r}. Valid names: {valid}"
        ) from None


def default_weights_dir() -> Path:
    """Directory searched for pretrained weights: ``$MEDML_WEIGHTS_DIR`` or ``var/weights/``."""
    configured = os.environ.get(WEIGHTS_DIR_ENV_VAR)
    return Path(configured) if configured else DEFAULT_WEIGHTS_DIR


def resolve_pretrained_weights(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of the ImageNet weights file for architecture ``name``, checked to exist.

    Args:
        name: A registered architecture that supports pretrained weights.
        weights_dir: Directory holding the weights files; ``None`` means
            :func:`default_weights_dir`.

    Returns:
        The path of the weights file.

    Raises:
        UnknownArchitectureError: when ``name`` is not registered.
        ValueError: when the architecture has no pretrained weights.
        PretrainedWeightsUnavailableError: when the file is not there.
    """
    spec = get_architecture(name)
    _require_pretrained_support(spec)
    directory = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    path = directory / spec.pretrained_weights_file
    if not path.is_file():
        raise PretrainedWeightsUnavailableError(_missing_weights_message(spec, path))
    return path


def build_model(
    name: str,
    *,
    input_shape: tuple[int, int, int],
    num_classes: int,
    pretrained_weights: str | os.PathLike | None = None,
    dropout: float | None = None,
    weight_decay: float = 0.0,
    **options: object,
) -> keras.Model:
    """Build a registered architecture.

    Args:
        name: Registry name (see :data:`ARCHITECTURES`).
        input_shape: ``(H, W, C)`` of the raw ``uint8`` images, ``H, W >= 8``, ``C`` in
            ``{1, 3}``.
        num_classes: Number of classes (>= 2).
        pretrained_weights: Local path of the official Keras ImageNet "notop" weights file (or
            of the directory holding it), for architectures with ``supports_pretrained``.
            ``None`` initialises every weight randomly. Nothing is ever downloaded.
        dropout: Dropout before the output layer; ``None`` uses the architecture's default.
        weight_decay: L2 strength on the kernels the architecture creates itself (for pretrained
            backbones, only the head).
        **options: Architecture-specific options, see ``ArchitectureSpec.options``.

    Returns:
        An uncompiled ``keras.Model`` from ``uint8`` images to class probabilities.

    Raises:
        UnknownArchitectureError: for an unknown ``name``.
        ValueError: for invalid arguments or options.
        PretrainedWeightsUnavailableError: when ``pretrained_weights`` does not exist.
    """
    spec = get_architecture(name)
    validate_input_shape(input_shape, min_size=spec.min_size)
    validate_num_classes(num_classes)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ValueError(
            f"Unknown option(s) for architecture {name!r}: {', '.join(unknown)}. "
            f"Accepted options: {', '.join(spec.options) or 'none'}. Received: options={options}"
        )
    kwargs = dict(options)
    if pretrained_weights is not None:
        _require_pretrained_support(spec)
        kwargs["pretrained_weights"] = _existing_weights_file(spec, pretrained_weights)
    return spec.builder(
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        dropout=dropout,
        weight_decay=weight_decay,
        **kwargs,
    )


def set_backbone_trainable(
    model: keras.Model, trainable: bool, *, train_batch_norm: bool = False
) -> int:
    """Freeze or unfreeze the pretrained backbone of a model.

    The backbone is every top-level layer (usually one nested model) whose name starts with
    ``"backbone"``. Following the Keras transfer-learning guide, BatchNormalization layers stay
    frozen when the backbone is unfrozen, unless ``train_batch_norm`` is set: a frozen
    BatchNormalization runs in inference mode, so fine-tuning on small batches of a new dataset
    does not overwrite the ImageNet statistics.

    Args:
        model: A model from :func:`build_model`.
        trainable: ``False`` to freeze (train the head only), ``True`` to fine-tune.
        train_batch_norm: When unfreezing, also unfreeze BatchNormalization layers.

    Returns:
        The number of top-level backbone layers toggled.

    Raises:
        ValueError: when the model has no backbone.
    """
    backbone_layers = [layer for layer in model.layers if layer.name.startswith(BACKBONE_PREFIX)]
    if not backbone_layers:
        raise ValueError(
            f"Model {model.name!r} has no layer named with the prefix {BACKBONE_PREFIX!r}. "
            f"Received: layers={[layer.name for layer in model.layers]}"
        )
    # Every nested layer is set explicitly: with the TensorFlow backend, assigning a layer the
    # ``trainable`` value it already has returns early and does not reach its sublayers.
    for layer in backbone_layers:
        for sublayer in _walk_layers(layer):
            if isinstance(sublayer, keras.layers.BatchNormalization):
                sublayer.trainable = bool(trainable and train_batch_norm)
            else:
                sublayer.trainable = bool(trainable)
    return len(backbone_layers)


def count_parameters(model: keras.Model) -> int:
    """Total number of weights (trainable and not, e.g. BatchNorm statistics) in ``model``."""
    return int(model.count_params())


def _walk_layers(layer: keras.layers.Layer):
    yield layer
    for sublayer in getattr(layer, "layers", ()):
        yield from _walk_layers(sublayer)


def _builder_options(builder: Callable[..., keras.Model]) -> dict[str, object]:
    common = {"input_shape", "num_classes", "dropout", "weight_decay", "pretrained_weights"}
    return {
        parameter.name: parameter.default
        for parameter in inspect.signature(builder).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.name not in common
    }


def _require_pretrained_support(spec: ArchitectureSpec) -> None:
    if not spec.supports_pretrained:
        supported = ", ".join(s.name for s in ARCHITECTURES.values() if s.supports_pretrained)
        raise ValueError(
            f"Architecture {spec.name!r} has no pretrained weights; it is trained from scratch. "
            f"Pretrained weights are available for: {supported or 'none'}."
        )


def _existing_weights_file(spec: ArchitectureSpec, path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / spec.pretrained_weights_file
    if not path.is_file():
        raise PretrainedWeightsUnavailableError(_missing_weights_message(spec, path))
    return path


def _missing_weights_message(spec: ArchitectureSpec, path: Path) -> str:
    return (
        f"Pretrained weights for {spec.name!r} not found at {path}. Expected the official Keras "
        f"ImageNet file {spec.pretrained_weights_file!r}; place it in the weights directory "
        f"(setting/environment variable {WEIGHTS_DIR_ENV_VAR}, default {DEFAULT_WEIGHTS_DIR}). "
        "Weights are never downloaded automatically."
    )

"""Ensembles: several trained models served, evaluated and explained as one.

An ensemble is an ordinary Keras model: its input (the raw ``uint8`` image, as for every model
of :mod:`medml.architectures`) goes to each member, a nested model named ``member_<i>`` that
keeps its own preprocessing, and the layer ``ensemble_mean`` averages their class
probabilities. It is saved as one ``.keras`` file, so the registry, ONNX serving, batch jobs and
evaluation treat it like any other model. Grad-CAM of an ensemble (:class:`EnsembleGradCam`) is
the mean of its members' maps for the same class, scaled back to a peak of 1.

Training one is :func:`medml.fit.train` with ``ensemble_size`` above 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

MEMBER_PREFIX = "member_"
MEAN_LAYER = "ensemble_mean"


def build_ensemble(members: Sequence[keras.Model], *, name: str = "ensemble") -> keras.Model:
    """One model averaging the softmax outputs of ``members`` (at least two).

    Raises:
        ValueError: when fewer than two members are given, or they differ in input shape, input
            type or number of classes.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least two members. Received: {len(members)}")
    shapes = {tuple(m.inputs[0].shape[1:]) for m in members}
    dtypes = {str(m.inputs[0].dtype) for m in members}
    classes = {int(m.outputs[0].shape[-1]) for m in members}
    if len(shapes) > 1 or len(dtypes) > 1 or len(classes) > 1:
        raise ValueError(
            "ensemble members must take the same images and predict the same classes. "
            f"Received: input shapes {sorted(shapes)}, input types {sorted(dtypes)}, "
            f"classes {sorted(classes)}"
        )
    inputs = keras.Input(shape=shapes.pop(), dtype=dtypes.pop(), name="image")
    outputs = [
        keras.Model(member.inputs[0], member.outputs[0], name=f"{MEMBER_PREFIX}{i}")(inputs)
        for i, member in enumerate(members)
    ]
    mean = keras.layers.Average(name=MEAN_LAYER, dtype="float32")(outputs)
    return keras.Model(inputs, mean, name=name)


def ensemble_members(model: keras.Model) -> list[keras.Model]:
    """The member models of an ensemble built by :func:`build_ensemble`; ``[]`` for any other."""
    try:
        model.get_layer(MEAN_LAYER)
    except ValueError:
        return []
    return [layer for layer in model.layers
            if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]


class EnsembleGradCam:
    """Grad-CAM of an ensemble: the mean of its members' maps for the class asked.

    Same interface as :class:`medml.explain.GradCam` (``heatmaps``, ``input_shape``,
    ``num_classes``).
    """

    def __init__(self, model: keras.Model, *, warm_up: bool = True):
        from medml.explain import GradCam

        members = ensemble_members(model)
        if not members:
            raise ValueError(f"{model.name} is not an ensemble of medml.ensemble")
        self._cams = [GradCam(member, warm_up=warm_up) for member in members]
        self.input_shape = self._cams[0].input_shape
        self.num_classes = self._cams[0].num_classes
        self.layer_name = ", ".join(
            f"{member.name}/{cam.layer_name}" for member, cam in zip(members, self._cams, strict=True)
        )

    def heatmaps(self, images: np.ndarray, classes: np.ndarray | list[int]) -> np.ndarray:
        maps = np.mean([cam.heatmaps(images, classes) for cam in self._cams], axis=0)
        peak = maps.max(axis=(1, 2), keepdims=True) if len(maps) else maps
        return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)


def explainer_for(model: keras.Model):
    """:class:`EnsembleGradCam` for an ensemble, :class:`medml.explain.GradCam` otherwise."""
    from medml.explain import GradCam

    return EnsembleGradCam(model) if ensemble_members(model) else GradCam(model)

"""Exceptions raised while looking up or building architectures."""

from __future__ import annotations


class UnknownArchitectureError(ValueError):
    """Raised when an architecture name is not in the registry."""


class PretrainedWeightsUnavailableError(FileNotFoundError):
    """Raised when a pretrained-weights file is missing on local disk.

    Weights are never downloaded: the official Keras ImageNet file must be placed in the weights
    directory beforehand.
    """

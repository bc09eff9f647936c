"""In-memory dataset representation shared by import, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class DatasetArrays:
    """Images and labels of a dataset, split into train/val/test.

    Images are always ``uint8`` with a channel axis: ``(N, H, W, C)``. Labels are ``int64`` of
    shape ``(N,)`` with values in ``range(len(class_names))``.
    """

    splits: dict[str, tuple[np.ndarray, np.ndarray]]
    class_names: list[str]
    extra: dict = field(default_factory=dict)

    def images(self, split: str) -> np.ndarray:
        return self.splits[split][0]

    def labels(self, split: str) -> np.ndarray:
        return self.splits[split][1]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        return tuple(int(d) for d in self.images("train").shape[1:])

    @property
    def channels(self) -> int:
        return self.image_shape[2]

    def split_counts(self) -> dict[str, int]:
        return {name: len(labels) for name, (_, labels) in self.splits.items()}

    def class_counts(self) -> dict[str, list[int]]:
        """Per split, the number of images of each class (index = class id)."""
        return {
            name: np.bincount(labels, minlength=self.num_classes).astype(int).tolist()
            for name, (_, labels) in self.splits.items()
        }

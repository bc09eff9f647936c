"""Reads from the catalog, always scoped to what the asking user may see."""

from __future__ import annotations

import threading
from collections import OrderedDict

from django.shortcuts import get_object_or_404

from classifier.models import Dataset, ModelVersion, Prediction
from medml import dataset_io
from medml.data import DatasetArrays


def datasets_visible_to(*, user):
    return Dataset.objects.visible_to(user).select_related("owner")


def dataset_get_for_user(*, user, pk) -> Dataset:
    return get_object_or_404(datasets_visible_to(user=user), pk=pk)


def model_versions_visible_to(*, user):
    return ModelVersion.objects.visible_to(user).select_related("dataset", "owner")


def predictions_visible_to(*, user):
    if not user.is_authenticated:
        return Prediction.objects.none()
    qs = Prediction.objects.select_related("model_version", "model_version__dataset")
    return qs if user.is_staff else qs.filter(owner=user)


class _ArrayCache:
    """A few recently used datasets per process, keyed by content hash (rows never change it)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[str, DatasetArrays] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, dataset: Dataset) -> DatasetArrays:
        with self._lock:
            if dataset.sha256 in self._items:
                self._items.move_to_end(dataset.sha256)
                return self._items[dataset.sha256]
        with dataset.data_file.open("rb") as fh:
            arrays = dataset_io.load_dataset_npz(fh, class_names=list(dataset.class_names))
        with self._lock:
            self._items[dataset.sha256] = arrays
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return arrays


_cache = _ArrayCache()


def dataset_arrays(*, dataset: Dataset) -> DatasetArrays:
    """The dataset's images and labels (loaded once per process)."""
    return _cache.get(dataset)


def dataset_sample_grid(*, dataset: Dataset, split: str = "train", per_class: int = 8) -> list[dict]:
    """For each class, the indices of a few sample images of ``split``."""
    arrays = dataset_arrays(dataset=dataset)
    grid = dataset_io.sample_grid(arrays, split=split, per_class=per_class, seed=0)
    return [
        {"index": i, "name": name, "samples": grid.get(i, [])}
        for i, name in enumerate(dataset.class_names)
    ]


def dataset_image_png(*, dataset: Dataset, split: str, index: int) -> bytes:
    arrays = dataset_arrays(dataset=dataset)
    if split not in arrays.splits:
        raise KeyError(split)
    images = arrays.images(split)
    if not 0 <= index < len(images):
        raise IndexError(index)
    return dataset_io.image_to_png_bytes(images[index])

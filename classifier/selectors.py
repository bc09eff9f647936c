"""Reads from the catalog, always scoped to what the asking user may see."""

from __future__ import annotations

import threading
from collections import OrderedDict
from datetime import date
from typing import TYPE_CHECKING

from django.db.models import FloatField
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.shortcuts import get_object_or_404

from classifier.models import Dataset, ModelVersion, Prediction, visible_to
from medml import dataset_io
from medml.data import DatasetArrays
from medplatform.rowcache import RowCache

if TYPE_CHECKING:
    from medml.infer import InputStats


# Row ids are 64-bit: a larger number names no row (and must not reach the database driver).
MAX_ID = 2**63 - 1


def parse_id(value) -> int | None:
    """An id from a query parameter or form field: ASCII digits within range, else ``None``."""
    text = str(value).strip()
    if not (text.isascii() and text.isdigit()):
        return None
    number = int(text)
    return number if 0 < number <= MAX_ID else None


def _in_range(number: int) -> bool:
    return 0 < number <= MAX_ID


def datasets_visible_to(*, user):
    return Dataset.objects.visible_to(user).select_related("owner")


def dataset_get_for_user(*, user, pk) -> Dataset:
    return get_object_or_404(datasets_visible_to(user=user), pk=pk)


def model_versions_visible_to(*, user):
    """Models a user may see and use: their own and public ones (staff: all).

    A public model may belong to a dataset the user cannot see; the model is theirs to use on
    their own images, the dataset's images stay private (see ``training.views.inference_list``).
    """
    return ModelVersion.objects.visible_to(user).select_related("dataset", "owner")


# Reports and histories are large JSON documents that serving never reads.
HEAVY_MODEL_FIELDS = ("metrics", "val_metrics", "history", "manifest")


def _load_serving_model(pk: int) -> ModelVersion | None:
    return (ModelVersion.objects.select_related("dataset").defer(*HEAVY_MODEL_FIELDS)
            .filter(pk=pk).first())


# Every classification reads its model and dataset: they are kept in the shared cache, and
# dropped from it whenever either row is saved or deleted (``classifier.apps``).
serving_models = RowCache("serving-model", [ModelVersion, Dataset], _load_serving_model)


def model_version_for_serving(*, pk: int, user) -> ModelVersion | None:
    """The model ``pk`` with its dataset, if ``user`` may use it; ``None`` otherwise.

    The same rule as :func:`model_versions_visible_to`, checked on the row, which comes from
    :data:`serving_models` (the heavy report fields are not loaded).
    """
    if not _in_range(pk):
        return None
    model_version = serving_models.get(pk)
    return model_version if model_version is not None and visible_to(model_version, user) else None


def forget_serving_models(*, pks) -> None:
    serving_models.forget(*pks)


def predictions_visible_to(*, user):
    if not user.is_authenticated:
        return Prediction.objects.none()
    qs = Prediction.objects.select_related("model_version", "model_version__dataset")
    return qs if user.is_staff else qs.filter(owner=user)


class _ArrayCache:
    """A few recently used datasets per process, keyed by content hash and class names (rows
    never change either; two rows may share one file under different class names)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self._items: OrderedDict[tuple, DatasetArrays] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, dataset: Dataset) -> DatasetArrays:
        key = (dataset.sha256, tuple(dataset.class_names))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with dataset.data_file.open("rb") as fh:
            arrays = dataset_io.load_dataset_npz(fh, class_names=list(dataset.class_names))
        with self._lock:
            self._items[key] = arrays
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


# --- Serving -----------------------------------------------------------------------------------


# The alias that names a dataset's production model (see ``ModelAlias``).
PRODUCTION_ALIAS = "production"


def default_model_for(*, dataset: Dataset, user) -> ModelVersion | None:
    """The model a user gets when they ask for a dataset's default.

    The dataset's production model when it has one the user may see; otherwise the visible model
    with the highest validation accuracy (the test split is kept for reporting, not for choosing),
    newest first among equals, models with no recorded accuracy last.
    """
    visible = model_versions_visible_to(user=user).filter(dataset=dataset)
    production = visible.filter(
        aliases__dataset=dataset, aliases__name=PRODUCTION_ALIAS
    ).first()
    if production is not None:
        return production
    accuracy = Cast(KT("val_metrics__accuracy"), FloatField())
    return visible.order_by(accuracy.desc(nulls_last=True), "-created_at", "-pk").first()


def predictions_owned_by(*, user):
    """A user's own prediction history (staff included: history is personal)."""
    if not user.is_authenticated:
        return Prediction.objects.none()
    return Prediction.objects.filter(owner=user).select_related(
        "model_version", "model_version__dataset"
    )


def prediction_history(
    *, user, model_id: int | None = None, dataset_id: int | None = None, label: str | None = None,
    created_from: date | None = None, created_to: date | None = None,
):
    """A user's own predictions, newest first, narrowed by model, dataset, label and days (UTC)."""
    qs = predictions_owned_by(user=user)
    if any(v is not None and not _in_range(v) for v in (model_id, dataset_id)):
        return qs.none()  # no row has such an id
    if model_id is not None:
        qs = qs.filter(model_version_id=model_id)
    if dataset_id is not None:
        qs = qs.filter(model_version__dataset_id=dataset_id)
    if label:
        qs = qs.filter(predicted_label=label)
    if created_from is not None:
        qs = qs.filter(created_at__date__gte=created_from)
    if created_to is not None:
        qs = qs.filter(created_at__date__lte=created_to)
    return qs


class _InputStatsCache:
    """Training-image statistics per dataset content hash, computed once per process."""

    def __init__(self):
        self._items: dict[str, InputStats] = {}
        self._lock = threading.Lock()

    def get(self, dataset: Dataset) -> InputStats:
        with self._lock:
            if dataset.sha256 in self._items:
                return self._items[dataset.sha256]
        from medml.infer import InputStats  # TensorFlow loads only in processes that serve models

        stats = InputStats.from_images(dataset_arrays(dataset=dataset).images("train"))
        with self._lock:
            self._items[dataset.sha256] = stats
        return stats


_input_stats = _InputStatsCache()


def dataset_input_stats(*, dataset: Dataset) -> InputStats:
    """Mean-intensity statistics of a dataset's training images, for the unusual-input check."""
    return _input_stats.get(dataset)

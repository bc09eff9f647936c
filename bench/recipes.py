"""Train one preset on one official dataset with medml, as the platform's workers do."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import load_medmnist, mean_std

_DATA_CACHE: dict = {}


def dataset(flag: str):
    if flag not in _DATA_CACHE:
        _DATA_CACHE[flag] = load_medmnist(flag)
    return _DATA_CACHE[flag]


def _train_subset(data, size: int, seed: int):
    """A stratified subset of the training split (validation and test stay whole)."""
    from medml.data import DatasetArrays

    images, labels = data.splits["train"]
    rng = np.random.default_rng(seed)
    keep = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[: max(1, round(size * np.mean(labels == c)))]
        for c in range(data.num_classes)])
    keep.sort()
    return DatasetArrays(splits={**data.splits, "train": (images[keep], labels[keep])},
                         class_names=data.class_names)


def train_preset(preset: str, flag: str, *, seed: int, overrides: dict | None = None,
                 train_subset: int | None = None) -> dict:
    """One run: the model is chosen on validation; the test split is evaluated once at the end."""
    from medml.config import resolve_preset
    from medml.fit import TrainingHooks, train

    class Progress(TrainingHooks):
        def on_epoch_end(self, *, epoch, total_epochs, metrics):
            print(f"     {preset} seed {seed} epoch {epoch}/{total_epochs}: "
                  f"val_acc {metrics.get('val_accuracy', 0):.4f} "
                  f"val_auc {metrics.get('val_auc') or 0:.4f} ({metrics.get('seconds', 0):.1f} s)",
                  flush=True)

    config = resolve_preset(preset, {**(overrides or {}), "seed": seed})
    data = dataset(flag)
    if train_subset:
        data = _train_subset(data, train_subset, seed)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-") as workdir:
        result = train(config=config, data=data, workdir=Path(workdir), hooks=Progress())
    wall = time.perf_counter() - started
    test = result.test_metrics or {}
    return {
        "preset": preset, "dataset": flag, "seed": seed, "config": config.to_dict(),
        "train_images": len(data.labels("train")),
        "epochs_completed": result.epochs_completed, "best_epoch": result.best_epoch,
        "monitor": result.monitor, "best_val": result.best_metric,
        "val_accuracy": result.val_metrics.get("accuracy"),
        "val_auc": result.val_metrics.get("roc_auc"),
        "test_accuracy": test.get("accuracy"), "test_auc": test.get("roc_auc"),
        "test_balanced_accuracy": test.get("balanced_accuracy"),
        "test_macro_f1": (test.get("macro_avg") or {}).get("f1"),
        "test_weighted": test.get("weighted_avg"),
        "train_seconds": result.train_seconds, "wall_seconds": wall,
        "num_params": result.num_params, "device": result.device,
        "ensemble_size": config.ensemble_size, "members": result.members,
    }


def summarise(runs: list[dict]) -> dict:
    keys = ["val_accuracy", "val_auc", "test_accuracy", "test_auc", "test_macro_f1",
            "train_seconds"]
    return {k: mean_std([r[k] for r in runs if r.get(k) is not None]) for k in keys
            if any(r.get(k) is not None for r in runs)}

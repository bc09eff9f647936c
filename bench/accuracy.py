"""Recommended recipes on the official splits, over several seeds, beside published figures."""

from __future__ import annotations

import json

from bench.common import RESULTS
from bench.recipes import summarise, train_preset
from medml.config import resolve_preset

RECIPES = [("strong_breast", "breastmnist"), ("fast_cpu_blood", "bloodmnist"),
           ("ensemble_breast", "breastmnist"), ("ensemble_blood", "bloodmnist")]

# Figures from elsewhere, for comparison (test split, 28x28 unless noted).
REFERENCES = {
    "bloodmnist": {
        "report_best (blood_cnn_95)": {"test_accuracy": 0.95},
        "MedMNIST v2 ResNet-18 (28)": {"test_accuracy": 0.958, "test_auc": 0.998},
        "best published at 28x28": {"test_accuracy": "0.966-0.972"},
        "MedMNIST+ best, any resolution": {"test_accuracy": 0.990},
        "target": {"test_accuracy": 0.98, "test_auc": 0.999},
    },
    "breastmnist": {
        "report_best (breast_cnn, no augmentation)": {"test_accuracy": 0.83},
        "MedMNIST v2 ResNet-18 (28)": {"test_accuracy": 0.863, "test_auc": 0.901},
        "best published at 28x28": {"test_auc": 0.919},
        "MedMNIST+ best, any resolution": {"test_accuracy": 0.906, "test_auc": 0.940},
        "target": {"test_accuracy": 0.90, "test_auc": 0.94},
    },
}


def run(*, seeds=None, quick: bool = False, only: str | None = None) -> dict:
    """All recipes, or with ``only`` one preset (the others' earlier results are kept)."""
    seeds = seeds or 3
    results = []
    for preset, flag in RECIPES:
        if only and preset != only:
            kept = _earlier(preset)
            if kept:
                results.append(kept)
            continue
        # An ensemble's members take seeds seed to seed + size - 1: repeats get disjoint ranges.
        size = resolve_preset(preset).ensemble_size
        runs = [train_preset(preset, flag, seed=s * size,
                             overrides={"epochs": 2} if quick else None)
                for s in range(seeds)]
        results.append({"preset": preset, "dataset": flag, "runs": runs,
                        "summary": summarise(runs), "references": REFERENCES[flag]})
    return {"quick": quick, "seeds": seeds, "recipes": results}


def _earlier(preset: str) -> dict | None:
    path = RESULTS / "accuracy.json"
    if not path.exists():
        return None
    for entry in json.loads(path.read_text()).get("recipes", []):
        if entry["preset"] == preset:
            return {**entry, "note": "kept from an earlier run: " + json.loads(
                path.read_text())["finished_at"]}
    return None

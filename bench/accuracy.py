"""Recommended recipes on the official splits, over several seeds, beside published figures."""

from __future__ import annotations

from bench.recipes import summarise, train_preset

RECIPES = [("strong_breast", "breastmnist"), ("fast_cpu_blood", "bloodmnist")]

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


def run(*, seeds=None, quick: bool = False) -> dict:
    seeds = seeds or 3
    results = []
    for preset, flag in RECIPES:
        runs = [train_preset(preset, flag, seed=s, overrides={"epochs": 2} if quick else None)
                for s in range(seeds)]
        results.append({"preset": preset, "dataset": flag, "runs": runs,
                        "summary": summarise(runs), "references": REFERENCES[flag]})
    return {"quick": quick, "seeds": seeds, "recipes": results}

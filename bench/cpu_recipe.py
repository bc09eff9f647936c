"""The CPU recipe: BloodMNIST test accuracy >= 0.97 within 10 minutes of training on 2 cores."""

from __future__ import annotations

from bench.recipes import summarise, train_preset

TARGET_ACCURACY = 0.97
BUDGET_SECONDS = 600


def run(*, seeds=None, quick: bool = False) -> dict:
    overrides = {"epochs": 2} if quick else {}
    runs = [train_preset("fast_cpu_blood", "bloodmnist", seed=s, overrides=overrides)
            for s in range(seeds or 1)]
    stats = summarise(runs)
    return {
        "target": {"test_accuracy": TARGET_ACCURACY, "train_seconds": BUDGET_SECONDS},
        "quick": quick, "runs": runs, "summary": stats,
        "met": all(r["test_accuracy"] >= TARGET_ACCURACY and r["train_seconds"] <= BUDGET_SECONDS
                   for r in runs),
    }

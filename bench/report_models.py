"""The report's six models, trained with their presets (epochs capped on this CPU; see result)."""

from __future__ import annotations

import json

from bench.common import RESULTS
from bench.recipes import summarise, train_preset

# preset, dataset, the report's test accuracy, majority-class rate of the test split.
MODELS = [
    ("report_blood_cnn_95", "bloodmnist", 0.95, 666 / 3421),
    ("report_blood_cnn_85", "bloodmnist", 0.85, 666 / 3421),
    ("report_resnet50_blood", "bloodmnist", 0.15, 666 / 3421),
    ("report_breast_cnn_83", "breastmnist", 0.83, 114 / 156),
    ("report_breast_cnn_77", "breastmnist", 0.77, 114 / 156),
    ("report_vgg16_breast", "breastmnist", 0.71, 114 / 156),
]
# The report trained for 100-450 epochs on a GPU. The small BreastMNIST CNNs train for the
# presets' own epochs here; the others get a CPU budget (the best validation epoch is kept).
EPOCH_CAPS = {"bloodmnist": 8, "breastmnist": None}
HEAVY_CAPS = {"report_resnet50_blood": 4, "report_vgg16_breast": 40}
# ResNet50 at 100x100 runs at a few images/s on 2 cores: it trains on a stratified subset.
TRAIN_SUBSETS = {"report_resnet50_blood": 1000}


def run(*, seeds=None, quick: bool = False, only: str | None = None) -> dict:
    """Every model, or with ``only`` one preset (the others' earlier rows are kept)."""
    earlier = {}
    path = RESULTS / "report_models.json"
    if only and path.exists():
        previous = json.loads(path.read_text())
        earlier = {row["preset"]: {**row, "note": f"kept from the run of {previous['finished_at']}"}
                   for row in previous["rows"]}
    rows = []
    for preset, flag, report_acc, majority in MODELS:
        if only and preset not in only.split(","):
            if preset in earlier:
                rows.append(earlier[preset])
            continue
        cap = 1 if quick else HEAVY_CAPS.get(preset, EPOCH_CAPS[flag])
        overrides = {} if cap is None else {"epochs": cap}
        if preset == "report_breast_cnn_77" and cap is not None:
            overrides["phase1_epochs"] = cap // 2
        runs = [train_preset(preset, flag, seed=s, overrides=overrides,
                             train_subset=TRAIN_SUBSETS.get(preset))
                for s in range(seeds or 1)]
        stats = summarise(runs)
        acc = stats["test_accuracy"]["mean"]
        rows.append({
            "preset": preset, "dataset": flag, "epochs": runs[0]["config"]["epochs"],
            "report_accuracy": report_acc,
            "train_images": runs[0]["train_images"],
            "majority_rate": round(majority, 4), "runs": runs, "summary": stats,
            "at_least_report": acc >= report_acc, "above_majority": acc > majority,
        })
    return {"quick": quick, "rows": rows}

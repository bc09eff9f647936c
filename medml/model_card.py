"""Model cards: a Markdown account of one model, written from what the platform recorded.

:func:`render_model_card` takes plain facts (no Django objects) and writes the sections a reader
needs before using a model: what it is, what it was trained on (with the data's sha256), how it
was trained, how it scored on held-out data with confidence intervals, how well its probabilities
are calibrated, the decision threshold it applies, and what it must not be used for. Missing facts
are reported as not recorded, never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

TIMES = "\u00d7"  # the multiplication sign, as in image sizes
EN_DASH = "\u2013"  # between the ends of a range

INTENDED_USE = (
    "Research and teaching: comparing architectures and training recipes on small medical "
    "image benchmarks. Research use only, not for diagnosis: it must not inform the care of a "
    "patient."
)


def render_model_card(facts: Mapping[str, Any]) -> str:
    """Markdown model card.

    Args:
        facts: A mapping with these keys (all optional except ``name`` and ``version``):
            ``name``, ``version``, ``architecture``, ``architecture_title``,
            ``architecture_description``, ``report_reference``, ``owner``, ``created_at``,
            ``public_benchmark`` (the name of the published benchmark the dataset is, if any),
            ``artifact_sha256``, ``num_params``, ``train_seconds``, ``config`` (dict),
            ``history`` (list of per-epoch dicts), ``metrics`` (test report from
            :func:`medml.stats.full_report`), ``val_metrics``, ``decision_threshold``,
            ``operating_point`` (from :func:`medml.stats.choose_threshold`), ``aliases``
            (list of names), ``manifest`` (dict with ``libraries``, ``device``, ...), and
            ``dataset``: ``{name, sha256, source, source_detail, license, modality, task,
            class_names, split_counts, class_counts, image_shape, source_preprocessing}``.

    Returns:
        The card as Markdown text.
    """
    sections = [
        _title(facts),
        _details(facts),
        _intended_use(facts),
        _data(facts.get("dataset") or {}),
        _training(facts),
        _evaluation(facts.get("metrics") or {}, facts.get("dataset") or {}),
        _calibration(facts.get("metrics") or {}),
        _threshold(facts),
        _reproducibility(facts),
    ]
    return "\n\n".join(section for section in sections if section).rstrip() + "\n"


def _title(facts: Mapping[str, Any]) -> str:
    aliases = facts.get("aliases") or []
    tag = f" ({', '.join(aliases)})" if aliases else ""
    return f"# Model card: {facts['name']} v{facts['version']}{tag}"


def _ensemble_size(facts: Mapping[str, Any]) -> int:
    size = (facts.get("config") or {}).get("ensemble_size")
    return size if isinstance(size, int) and not isinstance(size, bool) and size > 1 else 1


def _details(facts: Mapping[str, Any]) -> str:
    architecture = _join(facts.get("architecture_title"), facts.get("architecture"))
    members = _ensemble_size(facts)
    if architecture and members > 1:
        architecture += f"; an ensemble of {members} such models, their probabilities averaged"
    rows = [
        ("Architecture", architecture),
        ("Description", facts.get("architecture_description")),
        ("Report reference", facts.get("report_reference") or "none: not one of the report's models"),
        ("Parameters", _count(facts.get("num_params"))),
        ("Owner", facts.get("owner") or "platform"),
        ("Registered", facts.get("created_at")),
        ("Artifact sha256", _code(facts.get("artifact_sha256"))),
    ]
    return "## Model details\n\n" + _kv(rows)


def _intended_use(facts: Mapping[str, Any]) -> str:
    dataset = facts.get("dataset") or {}
    shape = dataset.get("image_shape")
    benchmark = facts.get("public_benchmark")
    if shape:
        size = f"Inputs are {shape[0]}{TIMES}{shape[1]} images with {shape[2]} channel(s)"
        low_resolution = max(shape[0], shape[1]) <= 64
    else:
        size, low_resolution = "The input size is not recorded", False
    limits = [
        size + (": far below clinical resolution, so fine detail a clinician would rely on is "
                "absent." if low_resolution else "."),
        (f"Trained and tested on one public benchmark ({benchmark})" if benchmark else
         "Trained and tested on one dataset")
        + "; performance on images from other sites, devices or populations is unknown and "
          "likely lower.",
        "Every prediction names one of the training classes, even for an image unlike any of "
        "them.",
        "Confidence intervals describe sampling variation of the test split only.",
    ]
    return ("## Intended use and limitations\n\n" + INTENDED_USE + "\n\n"
            + "\n".join(f"- {line}" for line in limits))


def _data(dataset: Mapping[str, Any]) -> str:
    if not dataset:
        return "## Data\n\nNot recorded."
    shape = dataset.get("image_shape")
    rows = [
        ("Dataset", dataset.get("name")),
        ("Source", _join(dataset.get("source"), dataset.get("source_detail"))),
        ("Modality", dataset.get("modality")),
        ("Licence", dataset.get("license")),
        ("Task", dataset.get("task")),
        ("Image shape", f" {TIMES} ".join(str(d) for d in shape) if shape else None),
        ("Data sha256", _code(dataset.get("sha256"))),
        ("Source preprocessing", _inline_dict(dataset.get("source_preprocessing"))),
    ]
    text = "## Data\n\n" + _kv(rows)
    names = dataset.get("class_names") or []
    counts = dataset.get("class_counts") or {}
    splits = [split for split in ("train", "val", "test") if split in counts]
    if names and splits:
        header = "| Class | " + " | ".join(splits) + " |"
        rule = "|---|" + "---:|" * len(splits)
        body = [
            f"| {index}: {_cell(name)} | "
            + " | ".join(str(counts[split][index]) for split in splits) + " |"
            for index, name in enumerate(names)
        ]
        text += "\n\nImages per class and split:\n\n" + "\n".join([header, rule, *body])
    return text


def _training(facts: Mapping[str, Any]) -> str:
    config = facts.get("config") or {}
    history = facts.get("history") or []
    rows = [
        ("Epochs trained", str(len(history)) if history else None),
        ("Training time", _seconds(facts.get("train_seconds"))),
    ]
    val_accuracy = (facts.get("val_metrics") or {}).get("accuracy")
    if val_accuracy is not None:
        rows.append(("Validation accuracy of this model", _number(val_accuracy)))
    best = _best_epoch(history)
    if best:
        rows.append(("Best validation accuracy" + (" of a member" if _ensemble_size(facts) > 1
                                                   else ""),
                     f"{best['val_accuracy']:.4f} at epoch {best.get('epoch', '?')}"))
    if history:
        last = history[-1]
        rows.append(("Last epoch", ", ".join(
            f"{key} {last[key]:.4f}" for key in ("loss", "accuracy", "val_loss", "val_accuracy")
            if isinstance(last.get(key), int | float)
        ) or None))
    text = "## Training\n\n" + _kv(rows)
    if config:
        shown = ", ".join(f"`{key}={_setting(value)}`"
                          for key, value in _flattened(dict(sorted(config.items()))))
        text += f"\n\nConfiguration: {shown}"
    return text


def _best_epoch(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    scored = [entry for entry in history if isinstance(entry.get("val_accuracy"), int | float)]
    return max(scored, key=lambda entry: entry["val_accuracy"]) if scored else None


def _evaluation(metrics: Mapping[str, Any], dataset: Mapping[str, Any]) -> str:
    if not metrics or "accuracy" not in metrics:
        return "## Evaluation\n\nNo test-split evaluation recorded."
    intervals = metrics.get("confidence_intervals") or {}
    weighted = metrics.get("weighted_avg") or {}
    macro = metrics.get("macro_avg") or {}
    rows = [
        ("Accuracy", metrics.get("accuracy"), intervals.get("accuracy")),
        ("Balanced accuracy", metrics.get("balanced_accuracy"), None),
        ("Macro F1", macro.get("f1"), intervals.get("macro_f1")),
        ("Weighted precision", weighted.get("precision"), None),
        ("Weighted recall", weighted.get("recall"), None),
        ("Weighted F1", weighted.get("f1"), None),
        ("ROC AUC", metrics.get("roc_auc"), intervals.get("roc_auc")),
        ("Log loss", metrics.get("log_loss"), None),
    ]
    level = intervals.get("level", 0.95)
    tta = (metrics.get("evaluation") or {}).get("tta")
    rule = ("the most probable class of the probabilities averaged over the image and its "
            "horizontal and vertical flips (test-time augmentation)" if tta
            else "the most probable class")
    lines = [
        f"On the test split ({metrics.get('n', '?')} images, never used to choose the model); "
        f"predictions are {rule}.",
        "",
        f"| Metric | Value | {level:.0%} CI |",
        "|---|---:|---:|",
    ]
    for name, value, interval in rows:
        lines.append(f"| {name} | {_number(value)} | {_interval(interval)} |")
    if intervals.get("n_bootstrap"):
        lines.append("")
        lines.append(f"Intervals: {intervals.get('method', 'bootstrap')}, "
                     f"{intervals['n_bootstrap']} resamples, seed {intervals.get('seed')}.")
    if metrics.get("roc_auc_note"):
        lines.append(f"ROC AUC: {metrics['roc_auc_note']}")
    per_class = metrics.get("per_class") or []
    if per_class:
        lines += ["", "| Class | Precision | Recall | F1 | Support |", "|---|---:|---:|---:|---:|"]
        for row in per_class:
            lines.append(f"| {row['index']}: {_cell(row['name'])} | {_number(row['precision'])} | "
                         f"{_number(row['recall'])} | {_number(row['f1'])} | {row['support']} |")
    binary = metrics.get("binary")
    if binary:
        lines += ["", f"Positive class: {binary['positive_class']} ({binary['positive_class_name']}); "
                      f"sensitivity {_number(binary['sensitivity'])}, specificity "
                      f"{_number(binary['specificity'])}."]
    return "## Evaluation\n\n" + "\n".join(lines)


def _calibration(metrics: Mapping[str, Any]) -> str:
    calibration = metrics.get("calibration")
    if not calibration:
        return ""
    lines = [
        f"Expected calibration error {_number(calibration['ece'])} "
        f"({calibration['n_bins']} equal-width bins of the top-class probability); "
        f"Brier score {_number(calibration['brier'])} (sum over classes, mean over images).",
        "",
        "| Confidence bin | Images | Mean confidence | Accuracy |",
        "|---|---:|---:|---:|",
    ]
    for row in calibration["bins"]:
        if row["count"]:
            lines.append(f"| {row['lower']:.2f}{EN_DASH}{row['upper']:.2f} | {row['count']} | "
                         f"{_number(row['confidence'])} | {_number(row['accuracy'])} |")
    return "## Calibration\n\n" + "\n".join(lines)


def _threshold(facts: Mapping[str, Any]) -> str:
    threshold = facts.get("decision_threshold")
    metrics = facts.get("metrics") or {}
    if threshold is None:
        if metrics.get("binary"):
            return ("## Decision threshold\n\nNone set: the most probable class is predicted "
                    "(probability ≥ 0.5).")
        return ""
    point = facts.get("operating_point") or {}
    names = (facts.get("dataset") or {}).get("class_names") or []
    lines = [f"Serving predicts class 1{_name(names, 1)} when its probability is ≥ {threshold:.6g}."]
    if point:
        positive = point["positive_class"]
        lines.append(
            f"Chosen on the validation split for a sensitivity of at least "
            f"{100 * point['target_sensitivity']:.4g}% for class {positive}{_name(names, positive)}: "
            f"predict it when its probability is ≥ {point['threshold']:.6g} "
            f"(validation sensitivity {_number(point['sensitivity'])}, specificity "
            f"{_number(point.get('specificity'))})."
        )
    at = metrics.get("at_threshold")
    if at:
        lines.append(
            f"On the test split at this threshold: accuracy {_number(at['accuracy'])}, "
            f"sensitivity {_number(at['sensitivity'])}, specificity {_number(at['specificity'])} "
            f"for class {at['positive_class']} ({at['positive_class_name']})."
        )
    return "## Decision threshold\n\n" + "\n\n".join(lines)


def _reproducibility(facts: Mapping[str, Any]) -> str:
    manifest = facts.get("manifest") or {}
    libraries = manifest.get("libraries") or {}
    rows = [
        ("Seed", manifest.get("seed")),
        ("Trained on", manifest.get("device")),
        ("Platform version", manifest.get("platform_version")),
        ("Libraries", ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())) or None),
    ]
    return "## Reproducibility\n\n" + _kv(rows)


# --- Formatting ----------------------------------------------------------------------------------


def _flattened(settings: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key, value)`` of nested settings, in their order."""
    for key, value in settings.items():
        if isinstance(value, Mapping) and value:
            yield from _flattened(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _setting(value: Any) -> str:
    """A configuration value as a reader writes it: ``none``, ``true``, ``[1, 2]``, ``0.001``."""
    if value is None or (isinstance(value, Mapping | list | tuple) and not value):
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "—"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_setting(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "; ".join(f"{key}: {_setting(item)}" for key, item in _flattened(value))
    return str(value)


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    return "\n".join(f"- **{key}:** {value if value not in (None, '') else 'not recorded'}"
                     for key, value in rows)


def _join(first: Any, second: Any) -> str | None:
    if first and second and first != second:
        return f"{first} (`{second}`)"
    return first or second or None


def _code(value: Any) -> str | None:
    return f"`{value}`" if value else None


def _count(value: Any) -> str | None:
    return f"{int(value):,}" if value else None


def _seconds(value: Any) -> str | None:
    return f"{float(value):.1f} s" if value else None


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "—"
    return f"{value:.4f}"


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval or interval.get("low") is None:
        return "—"
    return f"{interval['low']:.4f}{EN_DASH}{interval['high']:.4f}"


def _inline_dict(value: Any) -> str | None:
    if not value:
        return None
    return "; ".join(f"{key}: {_setting(item)}" for key, item in _flattened(value))


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _name(names: Sequence[str], index: int) -> str:
    return f" ({names[index]})" if index < len(names) else ""

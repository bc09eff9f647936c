"""Reads of the model registry: aliases, evaluations, model cards and comparisons.

Everything a user is shown goes through :func:`classifier.selectors.model_versions_visible_to`,
so a model they may not see is never named, compared or exported for them.
"""

from __future__ import annotations

import csv
import io
import itertools
import statistics
from pathlib import Path

from django.db.models import OuterRef, Prefetch, Subquery
from django.http import Http404
from django.shortcuts import get_object_or_404

from classifier import selectors
from classifier.models import (
    Dataset,
    ModelAlias,
    ModelAliasChange,
    ModelEvaluation,
    ModelVersion,
    Prediction,
)
from medml import dataset_io

DEFAULT_ALIAS = selectors.PRODUCTION_ALIAS
MAX_COMPARED = 8
LATENCY_SAMPLE = 500

# The report's published test-set figures (Tables 1 and 2): accuracy and weighted precision,
# recall and F1, as printed (two decimals). Shown beside measured models of the same dataset.
REPORT_REFERENCES = {
    "bloodmnist": [
        ("blood_cnn_95", "Novel DNN, 95% (Table 2)", 0.95, 0.95, 0.95, 0.94),
        ("blood_cnn_85", "Novel DNN, 85% (Table 2)", 0.85, 0.86, 0.85, 0.85),
        ("resnet50", "ResNet50 (Table 1)", 0.15, 0.11, 0.15, 0.11),
    ],
    "breastmnist": [
        ("breast_cnn", "Novel DNN without augmentation (Table 2)", 0.83, 0.82, 0.83, 0.82),
        ("breast_cnn", "Novel DNN with augmentation (Table 2)", 0.77, 0.79, 0.77, 0.71),
        ("vgg16", "VGG16 (Table 1)", 0.71, 0.67, 0.71, 0.68),
    ],
}

# (key, heading, kind, better) of the comparison table; kind says how a value is shown, better
# whether a higher or a lower value is the better one (None: neither).
COMPARE_COLUMNS = [
    ("model", "Model", "text", None),
    ("architecture", "Architecture", "text", None),
    ("accuracy", "Accuracy", "ratio", "higher"),
    ("precision_weighted", "Precision (weighted)", "ratio", "higher"),
    ("recall_weighted", "Recall (weighted)", "ratio", "higher"),
    ("f1_weighted", "F1 (weighted)", "ratio", "higher"),
    ("roc_auc", "AUC", "ratio", "higher"),
    ("balanced_accuracy", "Balanced accuracy", "ratio", "higher"),
    ("ece", "ECE", "ratio", "lower"),
    ("num_params", "Parameters", "int", None),
    ("train_seconds", "Training time (s)", "seconds", "lower"),
    ("eval_ms_per_image", "Batch inference (ms/image)", "ms", "lower"),
    ("serving_latency_ms", "Serving latency (median ms)", "ms", "lower"),
]


class ComparisonError(Exception):
    """A comparison request that cannot be answered; the message says why, for the user."""


# --- Permissions -----------------------------------------------------------------------------------


def can_change_aliases(*, user) -> bool:
    """Aliases are global per dataset, so only staff change them."""
    return bool(user and user.is_authenticated and user.is_staff)


def can_manage_model(*, user, model_version: ModelVersion) -> bool:
    """Evaluating a model or setting its threshold: its owner or staff."""
    return bool(user and user.is_authenticated
                and (user.is_staff or model_version.owner_id == user.pk))


# --- Models and aliases ----------------------------------------------------------------------------


def model_get_for_user(*, user, pk) -> ModelVersion:
    """A model the user may see, or 404 (an invisible model is reported as missing)."""
    return get_object_or_404(selectors.model_versions_visible_to(user=user), pk=pk)


def model_versions_for_list(*, user, dataset: Dataset | None = None):
    qs = selectors.model_versions_visible_to(user=user).prefetch_related(
        Prefetch("aliases", queryset=ModelAlias.objects.order_by("name"))
    )
    return qs.filter(dataset=dataset) if dataset is not None else qs


def dataset_aliases(*, dataset: Dataset):
    return ModelAlias.objects.filter(dataset=dataset).select_related("model_version")


def alias_changes(*, dataset: Dataset, limit: int = 50):
    """The dataset's alias audit trail, newest first (removed aliases' entries included)."""
    return (ModelAliasChange.objects.filter(dataset=dataset)
            .select_related("from_version", "to_version", "user")[:limit])


def removed_aliases(*, dataset: Dataset):
    """The removal entries of the dataset's aliases that were removed and not set again."""
    latest = (ModelAliasChange.objects.filter(dataset=dataset, alias_name=OuterRef("alias_name"))
              .order_by("-created_at", "-pk").values("pk")[:1])
    return (ModelAliasChange.objects
            .filter(dataset=dataset, action=ModelAliasChange.Action.REMOVE, pk=Subquery(latest))
            .exclude(alias_name__in=ModelAlias.objects.filter(dataset=dataset).values("name"))
            .select_related("from_version", "to_version", "user").order_by("alias_name"))


def alias_removal(*, dataset: Dataset, alias: str) -> ModelAliasChange | None:
    """The audit entry of the removal of ``alias``, when that is the alias's latest change."""
    latest = (ModelAliasChange.objects.filter(dataset=dataset, alias_name=alias)
              .select_related("from_version", "user").order_by("-created_at", "-pk").first())
    return latest if latest and latest.action == ModelAliasChange.Action.REMOVE else None


def alias_stack(*, alias: ModelAlias) -> list[int | None]:
    """The models the alias has named and can roll back through, oldest first, current last.

    Promotions push their model and rollbacks pop one. If the alias was changed outside the
    services, its current model is put on top so a rollback still goes to the one before it.
    """
    stack: list[int | None] = []
    for change in alias.changes.order_by("created_at", "pk"):
        if change.action == ModelAliasChange.Action.ROLLBACK and stack:
            stack.pop()
        else:
            stack.append(change.to_version_id)
    if not stack or stack[-1] != alias.model_version_id:
        stack.append(alias.model_version_id)
    return stack


# --- Evaluations ---------------------------------------------------------------------------------


def model_evaluation(*, model_version: ModelVersion, split: str = "test") -> ModelEvaluation | None:
    """The stored evaluation of the model on its own dataset's current content, if any."""
    return ModelEvaluation.objects.filter(
        model_version=model_version, dataset_id=model_version.dataset_id, split=split,
        dataset_sha256=model_version.dataset.sha256,
    ).first()


# --- Model cards -------------------------------------------------------------------------------------


def model_card_facts(*, model_version: ModelVersion) -> dict:
    """What :func:`medml.model_card.render_model_card` needs, read from the registry."""
    from medml.architectures import UnknownArchitectureError, get_architecture

    try:
        spec = get_architecture(model_version.architecture)
    except UnknownArchitectureError:
        spec = None
    dataset = model_version.dataset
    return {
        "name": model_version.name,
        "version": model_version.version,
        "architecture": model_version.architecture,
        "architecture_title": spec.title if spec else None,
        "architecture_description": spec.description if spec else None,
        "report_reference": spec.report_reference if spec else None,
        "owner": model_version.owner.username if model_version.owner else None,
        "created_at": model_version.created_at.strftime("%Y-%m-%d %H:%M UTC"),
        "public_benchmark": f"MedMNIST {flag}" if (flag := medmnist_flag(dataset)) else None,
        "artifact_sha256": model_version.sha256,
        "num_params": model_version.num_params,
        "train_seconds": model_version.train_seconds,
        "config": model_version.config,
        "history": model_version.history,
        "metrics": model_version.metrics,
        "val_metrics": model_version.val_metrics,
        "decision_threshold": model_version.decision_threshold,
        "operating_point": model_version.val_metrics.get("operating_point"),
        "aliases": list(model_version.aliases.order_by("name").values_list("name", flat=True)),
        "manifest": model_version.manifest,
        "dataset": {
            "name": dataset.name,
            "sha256": dataset.sha256,
            "source": dataset.get_source_display(),
            "source_detail": dataset.source_detail,
            "license": dataset.license,
            "modality": dataset.modality,
            "task": dataset.get_task_display(),
            "class_names": list(dataset.class_names),
            "split_counts": dataset.split_counts,
            "class_counts": dataset.class_counts,
            "image_shape": list(dataset.image_shape),
            "source_preprocessing": dataset.source_preprocessing,
        },
    }


def model_card_markdown(*, model_version: ModelVersion) -> str:
    from medml.model_card import render_model_card

    return render_model_card(model_card_facts(model_version=model_version))


# --- Comparison ----------------------------------------------------------------------------------


def parse_model_ids(values: list[str]) -> list[int]:
    """Model ids from ``models=1,2,3`` and/or repeated ``models=`` parameters, in order, once each."""
    ids: list[int] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            model_id = selectors.parse_id(part)
            if model_id is None:
                raise ComparisonError(f"'{part}' is not a model id")
            if model_id not in ids:
                ids.append(model_id)
    return ids


def medmnist_flag(dataset: Dataset) -> str | None:
    """``"bloodmnist"`` etc. for an official MedMNIST dataset at 28x28, else ``None``."""
    if dataset.source != Dataset.Source.MEDMNIST:
        return None
    parsed = dataset_io.parse_medmnist_filename(Path(dataset.source_detail).name)
    if not parsed or parsed[1] != 28:
        return None
    return parsed[0]


def report_references_for(dataset: Dataset) -> list[dict]:
    """The report's published rows for the dataset, as comparison rows (empty for others)."""
    rows = []
    for architecture, label, accuracy, precision, recall, f1 in REPORT_REFERENCES.get(
        medmnist_flag(dataset) or "", []
    ):
        rows.append({
            "id": None, "reference": True, "model": f"Report: {label}",
            "architecture": architecture, "accuracy": accuracy,
            "precision_weighted": precision, "recall_weighted": recall, "f1_weighted": f1,
            **dict.fromkeys(("roc_auc", "balanced_accuracy", "ece", "num_params", "train_seconds",
                             "eval_ms_per_image", "serving_latency_ms")),
        })
    return rows


def _serving_latencies(model_ids: list[int]) -> dict[int, float]:
    latencies: dict[int, float] = {}
    for model_id in model_ids:
        values = list(Prediction.objects.filter(model_version_id=model_id)
                      .order_by("-created_at").values_list("latency_ms", flat=True)[:LATENCY_SAMPLE])
        if values:
            latencies[model_id] = float(statistics.median(values))
    return latencies


def _model_row(model: ModelVersion, latency: float | None) -> dict:
    metrics = model.metrics or {}
    weighted = metrics.get("weighted_avg") or {}
    return {
        "id": model.pk,
        "reference": False,
        "model": str(model),
        "architecture": model.architecture,
        "accuracy": metrics.get("accuracy"),
        "precision_weighted": weighted.get("precision"),
        "recall_weighted": weighted.get("recall"),
        "f1_weighted": weighted.get("f1"),
        "roc_auc": metrics.get("roc_auc"),
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "ece": (metrics.get("calibration") or {}).get("ece"),
        "num_params": model.num_params or None,
        "train_seconds": model.train_seconds or None,
        "eval_ms_per_image": (metrics.get("evaluation") or {}).get("ms_per_image"),
        "serving_latency_ms": latency,
    }


def _confusion(model: ModelVersion, class_names: list[str]) -> dict:
    metrics = model.metrics or {}
    counts = metrics.get("confusion_matrix")
    normalized = metrics.get("confusion_matrix_normalized")
    rows = None
    if counts and normalized and len(counts) == len(class_names):
        rows = [
            {"name": class_names[i],
             "cells": [{"count": c, "share": round(float(s), 4)} for c, s in zip(cr, nr, strict=True)]}
            for i, (cr, nr) in enumerate(zip(counts, normalized, strict=True))
        ]
    return {"id": model.pk, "model": str(model), "rows": rows}


def _mcnemar_matrix(models: list[ModelVersion], dataset: Dataset) -> dict:
    """Pairwise McNemar tests on the test split, from the stored per-image predictions; each
    with ``p_holm``, its p-value adjusted (Holm) for the number of pairs tested."""
    from medml.stats import holm_adjust, mcnemar

    evaluations = {
        e.model_version_id: e for e in ModelEvaluation.objects.filter(
            model_version__in=models, dataset=dataset, split="test", dataset_sha256=dataset.sha256
        )
    }
    matrix: list[list[dict | None]] = [[None] * len(models) for _ in models]
    missing = [str(m) for m in models if m.pk not in evaluations]
    if len(evaluations) >= 2:
        labels = selectors.dataset_arrays(dataset=dataset).labels("test")
        for (i, a), (j, b) in itertools.combinations(enumerate(models), 2):
            if a.pk in evaluations and b.pk in evaluations:
                result = mcnemar(labels, evaluations[a.pk].predicted, evaluations[b.pk].predicted)
                matrix[i][j] = result
                # From B's side the discordant counts swap; the test is symmetric.
                matrix[j][i] = {**result, "b": result["c"], "c": result["b"]}
        pairs = [(i, j) for i, j in itertools.combinations(range(len(models)), 2) if matrix[i][j]]
        adjusted = holm_adjust([matrix[i][j]["p_value"] for i, j in pairs])
        for (i, j), p_holm in zip(pairs, adjusted, strict=True):
            matrix[i][j]["p_holm"] = matrix[j][i]["p_holm"] = p_holm
    return {"models": [str(m) for m in models], "ids": [m.pk for m in models],
            "matrix": matrix, "missing": missing}


def model_comparison(*, user, dataset: Dataset, model_ids: list[int]) -> dict:
    """Side-by-side view of up to 8 models of one dataset, with the report's published rows.

    Raises:
        Http404: for a model the user may not see.
        ComparisonError: for no models, too many, or models of another dataset.
    """
    if not model_ids:
        raise ComparisonError("choose at least one model to compare")
    if len(model_ids) > MAX_COMPARED:
        raise ComparisonError(f"compare at most {MAX_COMPARED} models at once")
    found = {m.pk: m for m in selectors.model_versions_visible_to(user=user).filter(pk__in=model_ids)}
    missing = [pk for pk in model_ids if pk not in found]
    if missing:
        raise Http404(f"no model {missing[0]} that you can see")
    models = [found[pk] for pk in model_ids]
    strangers = [str(m) for m in models if m.dataset_id != dataset.pk]
    if strangers:
        raise ComparisonError(f"{', '.join(strangers)} was not trained on {dataset.name}")
    class_names = list(dataset.class_names)
    latencies = _serving_latencies(model_ids)
    rows = [_model_row(m, latencies.get(m.pk)) for m in models]
    per_class = []
    for m in models:
        by_index = {row["index"]: row["f1"] for row in (m.metrics or {}).get("per_class", [])}
        per_class.append({"id": m.pk, "model": str(m),
                          "f1": [by_index.get(i) for i in range(len(class_names))]})
    return {
        "dataset": {"id": dataset.pk, "name": dataset.name, "class_names": class_names},
        "columns": [{"key": key, "label": label, "kind": kind, "better": better}
                    for key, label, kind, better in COMPARE_COLUMNS],
        "rows": rows,
        "references": report_references_for(dataset),
        "confusion_matrices": [_confusion(m, class_names) for m in models],
        "per_class_f1": per_class,
        "histories": [{"id": m.pk, "model": str(m), "history": m.history or []} for m in models],
        "mcnemar": _mcnemar_matrix(models, dataset),
    }


def comparison_csv(comparison: dict) -> str:
    """The comparison table (measured models, then the report's rows) as CSV."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    keys = [c["key"] for c in comparison["columns"]]
    writer.writerow(["source", *keys])
    for row in comparison["rows"] + comparison["references"]:
        writer.writerow(["report" if row["reference"] else "measured",
                         *[_csv_cell(row[key]) for key in keys]])
    return buffer.getvalue()


def _csv_cell(value):
    if value is None:
        return ""
    # A text cell starting like a formula is run by spreadsheets; quote it as text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value

"""HTML pages of the model registry: the model list, a model's page, and the comparison page."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models.deletion import ProtectedError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from classifier import selectors, selectors_registry, services, services_registry


def _format(value, kind: str) -> str:
    if value is None:
        return "—"
    if kind == "ratio":
        return f"{value:.4f}"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "seconds":
        return f"{value:.1f}"
    if kind == "ms":
        return f"{value:.3f}"
    return str(value)


def _by_accuracy(rows: list[dict]) -> list[dict]:
    """Most accurate first; rows without an accuracy last, in their order."""
    return sorted(rows, key=lambda row: (row["accuracy"] is None, -(row["accuracy"] or 0)))


def _table_rows(comparison: dict) -> list[dict]:
    """Comparison rows as cells with their display text and their sort value: measured models
    most accurate first, then the report's rows."""
    rows = []
    for row in _by_accuracy(comparison["rows"]) + comparison["references"]:
        cells = [
            {"key": c["key"], "text": _format(row[c["key"]], c["kind"]),
             "sort": "" if row[c["key"]] is None else row[c["key"]], "kind": c["kind"]}
            for c in comparison["columns"]
        ]
        rows.append({"id": row["id"], "reference": row["reference"], "cells": cells})
    return rows


def _p_value(value: float) -> str:
    """A p-value to four decimals; one too small for that is "< 0.0001", never "0.0000"."""
    return "< 0.0001" if value < 0.0001 else f"{value:.4f}"


def _dataset_from_query(request):
    dataset_id = selectors.parse_id(request.GET.get("dataset", ""))
    if dataset_id is not None:
        return selectors.dataset_get_for_user(user=request.user, pk=dataset_id)
    return None


MODELS_PER_PAGE = 50


@login_required
def model_list(request):
    raw = request.GET.get("dataset", "")
    error = None
    if raw and selectors.parse_id(raw) is None:
        error = f"'{raw}' is not a dataset id: choose a dataset from the list"
    dataset = None if error else _dataset_from_query(request)
    models = selectors_registry.model_versions_for_list(user=request.user, dataset=dataset)
    # A filter that cannot be applied shows no models, never every model instead.
    page = Paginator(models.none() if error else models, MODELS_PER_PAGE).get_page(
        request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(request, "classifier/model_list.html", {
        "nav": "models",
        "dataset": dataset,
        "datasets": selectors.datasets_visible_to(user=request.user),
        "models": page,
        "page": page,
        "query": query.urlencode(),
        "error": error,
    }, status=400 if error else 200)


@login_required
def model_detail(request, pk: int):
    model = selectors_registry.model_get_for_user(user=request.user, pk=pk)
    metrics = model.metrics or {}
    intervals = metrics.get("confidence_intervals") or {}
    return render(request, "classifier/model_detail.html", {
        "nav": "models",
        "model": model,
        "card": selectors_registry.model_card_markdown(model_version=model),
        "metrics": metrics,
        "intervals": [
            {"name": label, **intervals[key]}
            for key, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"),
                               ("roc_auc", "ROC AUC"))
            if key in intervals
        ],
        "calibration": metrics.get("calibration"),
        "at_threshold": metrics.get("at_threshold"),
        "operating_point": model.val_metrics.get("operating_point"),
        "binary": model.dataset.num_classes == 2,
        "has_test_predictions": selectors_registry.model_evaluation(model_version=model) is not None,
        "aliases": selectors_registry.dataset_aliases(dataset=model.dataset),
        "removed_aliases": selectors_registry.removed_aliases(dataset=model.dataset),
        # Aliases may name other users' private models: those are shown unnamed.
        "visible_ids": set(selectors.model_versions_visible_to(user=request.user)
                           .filter(dataset=model.dataset_id).values_list("pk", flat=True)),
        "changes": selectors_registry.alias_changes(dataset=model.dataset, limit=20),
        # A public model may belong to a dataset the user cannot see: no links to it then.
        "dataset_visible": selectors.datasets_visible_to(user=request.user).filter(
            pk=model.dataset_id).exists(),
        "can_manage": selectors_registry.can_manage_model(user=request.user, model_version=model),
        "can_change_aliases": selectors_registry.can_change_aliases(user=request.user),
        "default_alias": selectors_registry.DEFAULT_ALIAS,
    })


@login_required
def model_compare(request):
    context = {"nav": "models", "error": None, "comparison": None}
    try:
        ids = selectors_registry.parse_model_ids(request.GET.getlist("models"))
        dataset = _dataset_from_query(request)
        if dataset is None and ids:
            # The list page's checkboxes may not name the dataset; the first model's will do,
            # if the user may see it (as the API, which is given the dataset, requires).
            first = selectors_registry.model_get_for_user(user=request.user, pk=ids[0])
            dataset = selectors.dataset_get_for_user(user=request.user, pk=first.dataset_id)
        if dataset is None:
            raise selectors_registry.ComparisonError("choose models to compare on the models page")
        comparison = selectors_registry.model_comparison(
            user=request.user, dataset=dataset, model_ids=ids
        )
    except selectors_registry.ComparisonError as exc:
        context["error"] = str(exc)
        return render(request, "classifier/compare.html", context, status=400)
    if request.GET.get("format") == "csv":
        response = HttpResponse(selectors_registry.comparison_csv(comparison),
                                content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="compare-{dataset.slug}.csv"'
        return response
    context.update({
        "comparison": comparison,
        "dataset": dataset,
        "table_rows": _table_rows(comparison),
        "model_ids": ",".join(str(row["id"]) for row in comparison["rows"]),
        "curves": {"histories": comparison["histories"]},
        "per_class_rows": [
            {"index": i, "name": name,
             "values": [_format(row["f1"][i], "ratio") for row in comparison["per_class_f1"]]}
            for i, name in enumerate(comparison["dataset"]["class_names"])
        ],
        "mcnemar_rows": [
            {"model": name,
             "cells": [cell and {**cell, "p_text": _p_value(cell["p_value"]),
                                 "p_holm_text": _p_value(cell["p_holm"])}
                       for cell in comparison["mcnemar"]["matrix"][i]]}
            for i, name in enumerate(comparison["mcnemar"]["models"])
        ],
    })
    return render(request, "classifier/compare.html", context)


def _back(model):
    return redirect("model-detail", model.pk)


@require_POST
@login_required
def model_promote(request, pk: int):
    model = selectors_registry.model_get_for_user(user=request.user, pk=pk)
    alias = request.POST.get("alias") or selectors_registry.DEFAULT_ALIAS
    try:
        services_registry.model_alias_promote(
            model_version=model, alias=alias, user=request.user,
            reason=request.POST.get("reason", ""),
        )
    except services_registry.RegistryPermissionError as exc:
        raise PermissionDenied(str(exc)) from exc
    except services_registry.AliasError as exc:
        messages.error(request, str(exc))
    else:
        messages.success(request, f"{model} is now {alias} for {model.dataset}.")
    return _back(model)


@require_POST
@login_required
def alias_rollback(request, pk: int, alias: str):
    dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
    try:
        result = services_registry.model_alias_rollback(
            dataset=dataset, alias=alias, user=request.user, reason=request.POST.get("reason", "")
        )
    except services_registry.RegistryPermissionError as exc:
        raise PermissionDenied(str(exc)) from exc
    except services_registry.AliasError as exc:
        messages.error(request, str(exc))
        back = selectors.parse_id(request.POST.get("model", ""))
        return redirect("model-detail", back) if back else redirect("model-list")
    messages.success(request, f"{alias} of {dataset} is back to {result.model_version}.")
    return redirect("model-detail", result.model_version_id)


@require_POST
@login_required
def alias_remove(request, pk: int, alias: str):
    dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
    back = selectors.parse_id(request.POST.get("model", ""))
    try:
        change = services_registry.model_alias_remove(
            dataset=dataset, alias=alias, user=request.user, reason=request.POST.get("reason", "")
        )
    except services_registry.RegistryPermissionError as exc:
        raise PermissionDenied(str(exc)) from exc
    except services_registry.AliasError as exc:
        messages.error(request, str(exc))
    else:
        was = f" (it named {change.from_version})" if change.from_version else ""
        served = ("; its users are served the model with the best validation accuracy again"
                  if alias == selectors_registry.DEFAULT_ALIAS else "")
        messages.success(request, f"Removed {alias} of {dataset}{was}{served}.")
    return redirect("model-detail", back) if back else redirect("model-list")


def _manageable(request, pk: int):
    model = selectors_registry.model_get_for_user(user=request.user, pk=pk)
    if not selectors_registry.can_manage_model(user=request.user, model_version=model):
        raise PermissionDenied("only the model's owner or staff can do this")
    return model


@require_POST
@login_required
def model_evaluate(request, pk: int):
    model = _manageable(request, pk)
    try:
        evaluation = services_registry.model_version_evaluate(model_version=model)
    except (services_registry.EvaluationError, services.ArtifactIntegrityError) as exc:
        messages.error(request, str(exc))
    except FileNotFoundError:
        messages.error(request, f"A stored file of {model} is missing; it cannot be loaded.")
    else:
        if evaluation is None:
            messages.error(request, f"{model.dataset} has no test images.")
        else:
            messages.success(request, f"Evaluated {model} on {evaluation.n} test images.")
    return _back(model)


@require_POST
@login_required
def model_threshold(request, pk: int):
    model = _manageable(request, pk)
    try:
        if request.POST.get("clear"):
            services_registry.model_version_clear_threshold(model_version=model)
            messages.success(request, f"{model} predicts the most probable class again.")
            return _back(model)
        target = float(request.POST.get("target_sensitivity", ""))
        services_registry.model_version_set_threshold(model_version=model,
                                                      target_sensitivity=target)
    except ValueError:
        messages.error(request, "Give the target sensitivity as a number between 0 and 1.")
    except (services_registry.EvaluationError, services.ArtifactIntegrityError) as exc:
        messages.error(request, str(exc))
    except FileNotFoundError:
        messages.error(request, f"A stored file of {model} is missing; nothing was changed.")
    else:
        messages.success(request, f"Decision threshold of {model} set to "
                                  f"{model.decision_threshold:.6g} on class 1's probability.")
    return _back(model)


@require_POST
@login_required
def model_delete(request, pk: int):
    model = _manageable(request, pk)
    label = str(model)
    try:
        services_registry.model_version_delete(model_version=model)
    except (services_registry.ModelDeleteError, ProtectedError) as exc:
        messages.error(request, f"{label} was not deleted: " + (
            str(exc) if isinstance(exc, services_registry.ModelDeleteError) else "it is in use"))
        return _back(model)
    messages.success(request, f"Deleted {label} and its files.")
    return redirect("model-list")

"""HTML pages of the catalog. Thin: they read through selectors and write through services."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from classifier import selectors, services
from classifier.models import Visibility


@login_required
def dataset_list(request):
    return render(request, "classifier/dataset_list.html", {
        "datasets": selectors.datasets_visible_to(user=request.user),
    })


@login_required
def dataset_import_page(request):
    # The form posts to the REST API with the session's CSRF token, so the page can show upload
    # progress; errors come back as the API's field messages.
    return render(request, "classifier/dataset_import.html", {
        "visibility_choices": Visibility.choices,
        "can_publish": request.user.is_staff,
    })


@login_required
def dataset_detail(request, pk: int):
    dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
    split = request.GET.get("split", "train")
    if split not in dataset.split_counts:
        split = "train"
    return render(request, "classifier/dataset_detail.html", {
        "dataset": dataset,
        "balance": dataset.class_balance_rows(),
        "splits": dataset.splits,
        "split_totals": [dataset.split_counts[s] for s in dataset.splits],
        "split": split,
        "grid": selectors.dataset_sample_grid(dataset=dataset, split=split, per_class=8),
        "preprocessing": sorted(dataset.source_preprocessing.items()),
        "can_delete": _may_delete(request.user, dataset),
    })


def _may_delete(user, dataset) -> bool:
    return user.is_staff or dataset.owner_id == user.pk


@require_POST
@login_required
def dataset_delete(request, pk: int):
    """Delete a dataset and its file (owner or staff), unless models or training jobs use it."""
    dataset = selectors.dataset_get_for_user(user=request.user, pk=pk)
    if not _may_delete(request.user, dataset):
        raise PermissionDenied("you can only delete your own datasets")
    name = dataset.name
    try:
        services.dataset_delete(dataset=dataset)
    except services.DatasetImportError as exc:
        messages.error(request, f"{name} was not deleted: {exc}.")
        return redirect("dataset-detail", pk=pk)
    messages.success(request, f"Deleted the dataset {name} and its file.")
    return redirect("dataset-list")

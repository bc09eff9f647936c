"""Reads of training jobs, scoped to the asking user."""

from __future__ import annotations

from django.db.models import OuterRef, Subquery
from django.shortcuts import get_object_or_404

from training.models import TrainingJob


def training_jobs_visible_to(*, user):
    """The jobs ``user`` may see, each with ``retried_as``: the id of its retry, or ``None``."""
    retry = TrainingJob.objects.filter(retry_of=OuterRef("pk")).order_by("pk").values("pk")[:1]
    return (TrainingJob.objects.visible_to(user)
            .select_related("dataset", "owner", "model_version")
            .annotate(retried_as=Subquery(retry)))


def training_job_get_for_user(*, user, pk) -> TrainingJob:
    return get_object_or_404(training_jobs_visible_to(user=user), pk=pk)

"""Reads of training jobs, scoped to the asking user."""

from __future__ import annotations

from django.shortcuts import get_object_or_404

from training.models import TrainingJob


def training_jobs_visible_to(*, user):
    return TrainingJob.objects.visible_to(user).select_related("dataset", "owner", "model_version")


def training_job_get_for_user(*, user, pk) -> TrainingJob:
    return get_object_or_404(training_jobs_visible_to(user=user), pk=pk)

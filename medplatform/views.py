"""Site-level pages that draw on both apps."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from classifier import selectors as catalog
from training import selectors as jobs


@login_required
def home(request):
    return render(request, "home.html", {
        "datasets": catalog.datasets_visible_to(user=request.user),
        "models": catalog.model_versions_visible_to(user=request.user)[:10],
        "jobs": jobs.training_jobs_visible_to(user=request.user)[:8],
    })

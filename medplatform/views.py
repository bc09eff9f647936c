"""Site-level pages that draw on both apps."""

from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.views import defaults

from classifier import selectors as catalog
from training import selectors as jobs


@login_required
def home(request):
    return render(request, "home.html", {
        "datasets": catalog.datasets_visible_to(user=request.user),
        "models": catalog.model_versions_visible_to(user=request.user)[:10],
        "jobs": jobs.training_jobs_visible_to(user=request.user)[:8],
    })


# --- Error handlers (medplatform.urls): JSON under /api/, the usual pages elsewhere --------------

_API_PREFIX = "/api/"


def _api_error(request, status: int, detail: str):
    if not request.path.startswith(_API_PREFIX):
        return None
    return JsonResponse({"detail": detail}, status=status)


def bad_request(request, exception=None):
    return (_api_error(request, 400, "Bad request.")
            or defaults.bad_request(request, exception))


def permission_denied(request, exception=None):
    return (_api_error(request, 403, "You do not have permission to perform this action.")
            or defaults.permission_denied(request, exception))


def page_not_found(request, exception=None):
    # No URL of the API matches: the same body as a missing object of a matching URL.
    return (_api_error(request, 404, "Not found.")
            or defaults.page_not_found(request, exception))


def server_error(request):
    return (_api_error(request, 500, "Internal server error; the error was logged.")
            or defaults.server_error(request))

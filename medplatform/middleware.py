"""Response headers that keep uploaded and rendered content from running as script, request
timing, and a clear 503 while the database cannot be reached."""

import logging
import time

from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.middleware.common import CommonMiddleware as DjangoCommonMiddleware
from django.template.loader import render_to_string

logger = logging.getLogger(__name__)

DEFAULT_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
    "form-action 'self'"
)


class _PermanentRedirectKeepingMethod(HttpResponsePermanentRedirect):
    status_code = 308


class CommonMiddleware(DjangoCommonMiddleware):
    """Django's, except that adding the missing slash redirects with 308, not 301: a client that
    posts to ``/api/v1/predictions`` is sent on with its method and body, where a 301 would turn
    the request into a GET and lose the upload."""

    response_redirect_class = _PermanentRedirectKeepingMethod


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response
        self.policy = getattr(settings, "CONTENT_SECURITY_POLICY", DEFAULT_CSP)

    def __call__(self, request):
        response = self.get_response(request)
        response.headers.setdefault("Content-Security-Policy", self.policy)
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


class ServerTimingMiddleware:
    """Adds ``Server-Timing: app;dur=<ms>``: time spent in Django, for clients and benchmarks."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        response.headers["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.3f}"
        return response


class DatabaseUnavailableMiddleware:
    """Answers 503 with ``Retry-After`` when a view meets an unreachable database.

    A connection refused, dropped or timed out (``OperationalError``, ``InterfaceError``) is a
    temporary state of the platform, not a bug of the request: the client gets a reason and a
    time to retry instead of a bare 500. API paths get ``{"detail": ...}`` as JSON, pages a short
    HTML page rendered without touching the database. The services write each change in one
    transaction, so a request that fails this way leaves nothing half-written.
    """

    RETRY_AFTER_SECONDS = 5
    DETAIL = "The database is temporarily unavailable. Nothing was changed; please retry shortly."

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        logger.warning("database unavailable during %s %s: %s", request.method, request.path,
                       exception)
        if request.path.startswith("/api/"):
            response = JsonResponse({"detail": self.DETAIL}, status=503)
        else:
            response = HttpResponse(
                render_to_string("503.html", {"detail": self.DETAIL,
                                              "retry_after": self.RETRY_AFTER_SECONDS}),
                status=503)
        response["Retry-After"] = str(self.RETRY_AFTER_SECONDS)
        response["Cache-Control"] = "no-store"
        return response

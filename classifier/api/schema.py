"""The OpenAPI schema's view of every API operation: errors it answers, and pagination only where
the view paginates.

``REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]`` names :class:`ApiAutoSchema`. On top of what each view
documents with ``@extend_schema`` it adds, for every operation, the error responses the framework
itself gives (a client generated from the schema alone must know them), each with a body schema:

* 400 when the operation reads a request body or query parameters (validation or parse errors);
* 401 unless the view lets anyone in, 403 for a write under session authentication (CSRF);
* 404 when the path names an object (missing, or not visible to the caller);
* 415 when it reads a request body (another content type than the documented ones);
* 429 when it is throttled.

Error bodies are ``{"detail": "..."}``, except for validation errors (400, and the field-named
413 of an upload past the limit): an object of field names, each with a list of messages
(``non_field_errors`` for the request as a whole), or ``{"detail": "..."}`` when the request body
could not be parsed.
"""

from __future__ import annotations

from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import AllowAny

ERROR_COMPONENT = "Error"
VALIDATION_ERROR_COMPONENT = "ValidationError"

_ERROR_SCHEMA = {
    "type": "object",
    "description": "Why the request failed.",
    "properties": {"detail": {"type": "string", "description": "A readable reason."}},
    "required": ["detail"],
}
_VALIDATION_ERROR_SCHEMA = {
    "type": "object",
    "description": (
        "Each refused field (query parameter, form field or JSON key) with a list of reasons; "
        "``non_field_errors`` for the request as a whole. A request body that cannot be parsed "
        "at all gets ``detail`` instead."
    ),
    "properties": {
        "detail": {"type": "string", "description": "Why the request body could not be parsed."},
        "non_field_errors": {"type": "array", "items": {"type": "string"}},
    },
    "additionalProperties": {
        "description": "The reasons a field was refused: a list of messages (an object of "
                       "them per item or key, for a list or an object field).",
    },
}

# Descriptions of the errors added to operations that do not document them themselves.
_DEFAULT_DESCRIPTIONS = {
    "400": "Invalid request: the reasons, per field",
    "401": "Not authenticated: no, or an invalid, token or session",
    "403": "Forbidden (for session authentication, also a failed CSRF check)",
    "404": "Not found, or not visible to you",
    "413": "The upload is larger than the limit; nothing was stored",
    "415": "Unsupported content type of the request body",
    "429": "Too many requests: retry after the number of seconds in Retry-After",
}
_VALIDATION_CODES = {"400", "413"}
_BODY_METHODS = {"POST", "PUT", "PATCH"}


class ApiAutoSchema(AutoSchema):
    def _get_paginator(self):
        # DRF paginates only a viewset's list action (or a GET list view): a create that answers
        # with a list of objects (``POST /predictions/``) returns a plain array.
        action = getattr(self.view, "action", None)
        if self.method != "GET" or action not in (None, "list"):
            return None
        return super()._get_paginator()

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self._framework_error_codes():
            responses.setdefault(code, {"description": _DEFAULT_DESCRIPTIONS[code]})
        for code, response in responses.items():
            if code.startswith("4") and not response.get("content"):
                component = self._error_component(code in _VALIDATION_CODES)
                response["content"] = {"application/json": {"schema": component.ref}}
                response["description"] = (response.get("description")
                                           or _DEFAULT_DESCRIPTIONS.get(code, ""))
        return dict(sorted(responses.items()))

    def _framework_error_codes(self) -> list[str]:
        codes = []
        reads_body = self.method in _BODY_METHODS and self._get_request_body() is not None
        query = [p for p in self._get_parameters() if p.get("in") == "query"]
        if reads_body or query:
            codes.append("400")
        # No permission class at all (``ObtainAuthToken``) or only AllowAny: open to anyone.
        if any(not isinstance(p, AllowAny) for p in self.view.get_permissions()):
            codes.append("401")
            if self.method not in ("GET", "HEAD", "OPTIONS") and any(
                    isinstance(a, SessionAuthentication) for a in self.view.get_authenticators()):
                codes.append("403")
        if "{" in self.path:
            codes.append("404")
        if reads_body:
            codes.append("415")
        if self.view.get_throttles():
            codes.append("429")
        return codes

    def _error_component(self, validation: bool) -> ResolvedComponent:
        name = VALIDATION_ERROR_COMPONENT if validation else ERROR_COMPONENT
        component = ResolvedComponent(
            name=name, type=ResolvedComponent.SCHEMA, object=name,
            schema=_VALIDATION_ERROR_SCHEMA if validation else _ERROR_SCHEMA,
        )
        self.registry.register_on_missing(component)
        return component

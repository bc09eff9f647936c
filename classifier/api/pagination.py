"""Pagination of every API list: ``?limit=`` and ``?offset=``, checked and bounded."""

from __future__ import annotations

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import LimitOffsetPagination


class CheckedLimitOffsetPagination(LimitOffsetPagination):
    """DRF's limit/offset pagination, except that a bad value is an error, not ignored.

    DRF answers ``?limit=abc`` or ``?offset=-5`` with the first page, as if nothing were asked,
    and serves any ``?limit=`` however large in one response. Here a limit that is not a whole
    number from 1 up, or an offset that is not one from 0 up, is a 400 naming the parameter; a
    limit over :attr:`max_limit` is lowered to it (the page's ``next`` link goes on from there).
    """

    max_limit = 500

    def get_limit(self, request):
        raw = request.query_params.get(self.limit_query_param)
        if raw is None or raw == "":
            return self.default_limit
        limit = _whole_number(raw, self.limit_query_param, minimum=1)
        return min(limit, self.max_limit) if self.max_limit else limit

    def get_offset(self, request):
        raw = request.query_params.get(self.offset_query_param)
        if raw is None or raw == "":
            return 0
        return _whole_number(raw, self.offset_query_param, minimum=0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["schema"]["minimum"] = 1
                parameter["description"] += (f" At most {self.max_limit} are returned: a larger "
                                             "limit is lowered to it.")
            elif parameter["name"] == self.offset_query_param:
                parameter["schema"]["minimum"] = 0
        return parameters


def _whole_number(raw: str, name: str, *, minimum: int) -> int:
    text = raw.strip()
    # ASCII digits only (int() also takes other scripts' digits and "1_000"); no huge numbers.
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or int(text) < minimum:
        raise ValidationError({name: [f"must be a whole number from {minimum} up"]})
    return int(text)

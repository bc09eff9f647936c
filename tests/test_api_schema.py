"""The OpenAPI schema as a client generator reads it, and the API-wide error answers.

A client written from ``/api/v1/schema/`` alone must learn from it every status an operation
can answer and the body that comes with it; and every answer under ``/api/`` is JSON, including
those of URLs no view matches and of errors no view caught.
"""

from __future__ import annotations

import re
import warnings

import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

METHODS = ("get", "post", "put", "patch", "delete")
# Operations anyone may call (a password for a token): no 401.
OPEN_OPERATIONS = {("post", "/api/v1/auth/token/")}


@pytest.fixture
def alice():
    return UserFactory(username="alice")


@pytest.fixture
def api(alice) -> APIClient:
    client = APIClient()
    client.force_authenticate(alice)
    return client


@pytest.fixture
def schema(api) -> dict:
    response = api.get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method in METHODS:
            if method in item:
                yield method, path, item[method]


def resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref")
    return schema["components"]["schemas"][ref.rsplit("/", 1)[-1]] if ref else node


# --- the schema document -------------------------------------------------------------------------


def test_the_schema_validates_without_warnings(tmp_path):
    # --fail-on-warn turns any warning or error of the generator (and of the OpenAPI validator,
    # with --validate) into a failed command.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        call_command("spectacular", "--validate", "--fail-on-warn",
                     "--file", str(tmp_path / "schema.yaml"))
    assert (tmp_path / "schema.yaml").read_text().startswith("openapi: 3.")


def test_every_operation_documents_the_errors_the_framework_answers(schema):
    missing = []
    for method, path, operation in operations(schema):
        codes = set(operation["responses"])
        expected = {"429"}
        if (method, path) not in OPEN_OPERATIONS:
            expected.add("401")
        if "{" in path:
            expected.add("404")
        if "requestBody" in operation:
            expected |= {"400", "415"}
        if any(p["in"] == "query" for p in operation.get("parameters", [])):
            expected.add("400")
        if method in ("post", "put", "patch", "delete") and (method, path) not in OPEN_OPERATIONS:
            expected.add("403")  # session authentication's CSRF check
        if expected - codes:
            missing.append(f"{method.upper()} {path}: {sorted(expected - codes)}")
    assert not missing, "\n".join(missing)


def test_every_documented_error_has_a_json_body_with_a_reason(schema):
    bare = []
    for method, path, operation in operations(schema):
        for code, response in operation["responses"].items():
            if not code.startswith("4"):
                continue
            body = response.get("content", {}).get("application/json", {}).get("schema")
            if body is None or "detail" not in resolve(schema, body).get("properties", {}):
                bare.append(f"{method.upper()} {path} {code}")
    assert not bare, "\n".join(bare)


def test_uploads_document_the_413_of_a_file_over_the_limit(schema):
    for path in ("/api/v1/datasets/", "/api/v1/inference-jobs/"):
        assert "413" in schema["paths"][path]["post"]["responses"], path


def test_classifying_images_is_documented_as_the_plain_array_it_returns(schema):
    operation = schema["paths"]["/api/v1/predictions/"]["post"]
    body = operation["responses"]["201"]["content"]["application/json"]["schema"]
    # Not a page of results: the view answers one prediction per image, in a JSON array.
    assert body == {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}
    assert not [p for p in operation.get("parameters", []) if p["name"] in ("limit", "offset")]


def test_only_list_operations_take_pagination_parameters(schema):
    for method, path, operation in operations(schema):
        names = {p["name"] for p in operation.get("parameters", []) if p["in"] == "query"}
        if {"limit", "offset"} & names:
            assert method == "get" and "{" not in path, f"{method.upper()} {path}"


def test_the_filters_the_lists_apply_are_documented(schema):
    def query(path, method="get"):
        return {p["name"]: p for p in schema["paths"][path][method].get("parameters", [])
                if p["in"] == "query"}

    assert "dataset" in query("/api/v1/models/")
    status = query("/api/v1/training-jobs/")["status"]
    assert set(status["schema"]["enum"]) == {"queued", "running", "succeeded", "failed",
                                             "cancelled"}
    assert {"split", "per_class"} <= set(query("/api/v1/datasets/{id}/samples/"))
    limit = query("/api/v1/datasets/")["limit"]
    assert limit["schema"]["minimum"] == 1 and "At most 500" in limit["description"]


def test_batch_results_are_documented_in_both_formats(schema):
    operation = schema["paths"]["/api/v1/inference-jobs/{id}/results/{kind}/"]["get"]
    assert set(operation["responses"]["200"]["content"]) == {"text/csv", "application/json"}
    kind = next(p for p in operation["parameters"] if p["name"] == "kind")
    assert set(kind["schema"]["enum"]) == {"csv", "json"}


def test_the_registry_actions_document_their_refusals(schema):
    paths = schema["paths"]
    assert {"403", "409"} <= set(paths["/api/v1/models/{id}/evaluate/"]["post"]["responses"])
    assert {"403", "409"} <= set(paths["/api/v1/models/{id}/threshold/"]["post"]["responses"])
    assert "409" in paths["/api/v1/models/{id}/export/"]["get"]["responses"]
    assert "404" in paths["/api/v1/models/compare/"]["get"]["responses"]
    for action in ("cancel", "retry"):
        assert "409" in paths[f"/api/v1/training-jobs/{{id}}/{action}/"]["post"]["responses"]


# --- errors Django answers itself ----------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/api/v1/no-such-endpoint/",
    "/api/v1/inference-jobs/1/results/xml/",  # a URL the action's pattern does not match
    "/api/v2/datasets/",
])
def test_an_unknown_api_url_is_a_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"detail": "Not found."}


def test_an_unknown_page_url_is_still_an_html_404(alice):
    client = Client()
    client.force_login(alice)
    response = client.get("/no-such-page/")
    assert response.status_code == 404
    assert response["Content-Type"].startswith("text/html")


def test_an_uncaught_error_under_the_api_is_a_json_500(alice, monkeypatch):
    from classifier import selectors

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(selectors, "datasets_visible_to", broken)
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(alice)
    response = client.get("/api/v1/datasets/")
    assert response.status_code == 500
    assert response["Content-Type"] == "application/json"
    detail = response.json()["detail"]
    assert "boom" not in detail and re.search(r"server error", detail, re.I)


# --- answers against the schema ------------------------------------------------------------------


def _json_schema(node):
    """OpenAPI 3.0's ``nullable`` as JSON Schema's ``null`` type, throughout ``node``."""
    if isinstance(node, list):
        return [_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _json_schema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        if "type" in converted:
            converted["type"] = [converted["type"], "null"]
        else:  # a $ref, an enum or a composition: one of it or null
            converted = {"anyOf": [converted, {"type": "null"}]}
    return converted


def test_batch_jobs_in_every_phase_answer_as_the_schema_says(api, alice, schema):
    import jsonschema

    from tests.factories import ModelVersionFactory
    from training.models import InferenceJob

    model = ModelVersionFactory(owner=alice)
    component = {"$ref": "#/components/schemas/InferenceJob",
                 "components": _json_schema(schema["components"])}
    for phase in ["", *InferenceJob.Phase.values]:
        job = InferenceJob.objects.create(owner=alice, model_version=model, phase=phase,
                                          source=InferenceJob.Source.DATASET,
                                          dataset=model.dataset, split="test")
        answer = api.get(f"/api/v1/inference-jobs/{job.pk}/").json()
        jsonschema.validate(answer, component)  # a queued job's phase is "" (blank)
        listed = api.get("/api/v1/inference-jobs/").json()["results"]
        for row in listed:
            jsonschema.validate(row, component)

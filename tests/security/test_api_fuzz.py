"""Schemathesis against the live OpenAPI schema: no request may end in a server error.

The schema is read from ``/api/v1/schema/`` and every operation in it is fuzzed in-process
through the WSGI application (no network), three ways:

* anonymously, with data that fits the schema;
* with the token of a user who owns a dataset and a small trained model, with data that fits
  the schema and with data that breaks it;
* the same user again with the path's ``pk`` set to the id of one of their own objects, so the
  fuzzing reaches past the 404 into the views' real work.

The check that fails the test is Schemathesis' ``not_a_server_error`` (status < 500); the other
built-in checks (status codes and content types documented, response bodies matching the
schema, ...) are run and counted, and reported in ``reliability/results/api_fuzz.json`` with
the request and server-error counts, but do not fail the test.

Jobs are created but not run: training and batch inference are queued by the API and executed
by workers, so queuing is replaced by a no-op here (a fuzzed training config must not train for
minutes; workers have tests of their own).
"""

from __future__ import annotations

import collections
import contextlib
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import schemathesis
from django.conf import settings as settings_module
from django.core.wsgi import get_wsgi_application
from django.db import connection
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from classifier import services
from medplatform import auth
from tests.factories import DatasetFactory, UserFactory, medmnist_arrays, save_tiny_trained_model
from training.models import InferenceJob, TrainingJob

RESULTS = Path(__file__).resolve().parents[2] / "reliability" / "results" / "api_fuzz.json"
MIN_REQUESTS = 1000

# Examples per operation in each round.
EXAMPLES = {"anonymous": 8, "authenticated": 12, "authenticated-negative": 10, "own-objects": 10}

# Which of the user's objects a path ``pk`` names, by the path's first segment.
# Schemathesis reports failed checks as exception groups.
CHECK_FAILURES = (Exception, BaseExceptionGroup)

REVOKE_TOKEN = {("DELETE", "/api/v1/auth/token/"), ("POST", "/api/v1/auth/token/rotate/")}

OWN_OBJECT = {"datasets": "dataset", "models": "model", "training-jobs": "job",
              "inference-jobs": "batch", "predictions": "prediction"}


class Tally:
    """Requests sent, answers by status, server errors and other checks' findings."""

    def __init__(self):
        self.requests = 0
        self.by_mode: collections.Counter = collections.Counter()
        self.statuses: collections.Counter = collections.Counter()
        self.server_errors: list[dict] = []
        self.other_checks: collections.Counter = collections.Counter()
        self.other_examples: dict[str, str] = {}

    def record(self, mode: str, case, response) -> None:
        self.requests += 1
        self.by_mode[mode] += 1
        self.statuses[str(response.status_code)] += 1
        label = f"{case.method.upper()} {case.operation.path}"
        try:
            case.validate_response(response, checks=[not_a_server_error])
        except CHECK_FAILURES as exc:  # the check's failure, kept for the report
            self.server_errors.append({
                "mode": mode, "operation": label, "status": response.status_code,
                "request": case.as_curl_command(), "detail": str(exc)[:2000],
            })
        try:
            case.validate_response(response, excluded_checks=[not_a_server_error])
        except CHECK_FAILURES as exc:  # reported, not failed: see the module docstring
            for failure in getattr(exc, "exceptions", [exc]):
                key = f"{label}: {getattr(failure, 'title', type(failure).__name__)}"
                self.other_checks[key] += 1
                self.other_examples.setdefault(key, str(failure)[:300])


@pytest.fixture
def owner_with_objects(transactional_db, tmp_path):
    """A user with a dataset, a small trained model, a job, a batch job and a prediction."""
    from django.core.files.base import ContentFile

    from classifier.models import Prediction
    from tests.factories import png_bytes

    user = UserFactory(username="fuzz-owner")
    arrays = medmnist_arrays(seed=3)
    dataset = DatasetFactory(owner=user, name="Fuzz dataset", seed=3)
    artifact = save_tiny_trained_model(arrays, tmp_path / "tiny.keras")
    model = services.model_version_register(
        name="fuzz-model", architecture="compact_cnn", dataset=dataset, owner=user,
        artifact_path=artifact, config={"width": 8}, num_params=1,
    )
    job = TrainingJob.objects.create(owner=user, dataset=dataset, config={"epochs": 1},
                                     total_epochs=1, status=TrainingJob.Status.FAILED)
    batch = InferenceJob.objects.create(owner=user, model_version=model, dataset=dataset,
                                        source=InferenceJob.Source.DATASET, split="test")
    prediction = Prediction(owner=user, model_version=model, image_content_type="image/png",
                            image_sha256="0" * 64, original_name="x.png", predicted_index=0,
                            predicted_label="adenoma", probabilities={"adenoma": 1.0})
    prediction.image.save("x.png", ContentFile(png_bytes()), save=False)
    prediction.save()
    ids = {"dataset": dataset.pk, "model": model.pk, "job": job.pk, "batch": batch.pk,
           "prediction": prediction.pk}
    return user, Token.objects.create(user=user).key, ids


@pytest.fixture
def jobs_are_not_run(monkeypatch):
    """Queued jobs stay queued: no training or batch inference runs inside the test."""
    from training import inference
    from training import services as training_services

    monkeypatch.setattr(training_services, "training_job_enqueue", lambda *, job: None)
    monkeypatch.setattr(inference, "inference_job_enqueue", lambda *, job: None)
    # Fuzzed token requests fail by the hundred: count them against an address of this run's
    # own, not the loopback address other tests (and other runs sharing a Redis cache) log in from.
    address = f"198.19.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    monkeypatch.setattr(auth, "client_address", lambda request: address)


def fuzz(operation, mode: str, tally: Tally, *, headers=None, generation=GenerationMode.POSITIVE,
         path_parameters=None) -> None:
    strategy = operation.as_strategy(generation_mode=generation, path_parameters=path_parameters,
                                     headers=headers)

    @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def run(case):
        response = case.call()
        tally.record(mode, case, response)

    with contextlib.suppress(Unsatisfiable):  # nothing in the operation breaks the schema
        run()


@pytest.mark.slow
def test_api_fuzz_has_no_server_errors(owner_with_objects, jobs_are_not_run):
    np.random.seed(0)
    _, token, ids = owner_with_objects
    app = get_wsgi_application()
    schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", app)
    auth = {"Authorization": f"Token {token}"}
    tally = Tally()
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Revoking or rotating the token refuses every later request made with it: fuzz those last.
    operations.sort(key=lambda op: (op.method.upper(), op.path) in REVOKE_TOKEN)
    for operation in operations:
        fuzz(operation, "anonymous", tally)
        fuzz(operation, "authenticated", tally, headers=auth)
        fuzz(operation, "authenticated-negative", tally, headers=auth,
             generation=GenerationMode.NEGATIVE)
        resource = operation.path.removeprefix("/api/v1/").split("/")[0]
        if "{id}" in operation.path and resource in OWN_OBJECT:
            fuzz(operation, "own-objects", tally, headers=auth,
                 path_parameters={"id": ids[OWN_OBJECT[resource]]})
    seconds = time.monotonic() - started

    report = {
        "tool": f"schemathesis {schemathesis.__version__}",
        "schema": "/api/v1/schema/",
        "database": connection.vendor,
        "cache": settings_module.CACHES["default"]["BACKEND"].rsplit(".", 1)[-1],
        "operations": len(operations),
        "requests": tally.requests,
        "requests_by_mode": dict(tally.by_mode),
        "server_errors": len(tally.server_errors),
        "server_error_cases": tally.server_errors[:20],
        "responses_by_status": dict(sorted(tally.statuses.items())),
        "other_check_findings": dict(tally.other_checks.most_common()),
        "other_check_examples": tally.other_examples,
        "examples_per_operation": EXAMPLES,
        "seconds": round(seconds, 1),
        "command": ".venv/bin/python -m pytest tests/security/test_api_fuzz.py -m slow",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")

    assert tally.requests >= MIN_REQUESTS, f"only {tally.requests} requests were generated"
    assert tally.by_mode["anonymous"] and tally.by_mode["authenticated"]
    assert not tally.server_errors, json.dumps(tally.server_errors[:5], indent=2)


# --- cases the fuzzer found, kept as plain regression tests --------------------------------------

HUGE = "342703543824584146944"  # beyond 64 bits: SQLite's driver raised OverflowError


@pytest.mark.django_db
@pytest.mark.parametrize("path", [
    f"/api/v1/predictions/?model={HUGE}",
    f"/api/v1/predictions/?dataset={HUGE}",
    f"/api/v1/models/?dataset={HUGE}",
    "/api/v1/models/?dataset=%C2%B2",  # "²" passes str.isdigit() but is no number
    f"/api/v1/models/compare/?dataset={HUGE}&models=1",
    f"/api/v1/models/compare/?dataset=1&models={HUGE}",
    "/api/v1/models/compare/?dataset=1&models=%C2%B2",
    f"/api/v1/models/{HUGE}/",
    f"/api/v1/predictions/{HUGE}/",
    f"/models/?dataset={HUGE}",
    f"/models/compare/?models={HUGE}",
    "/models/compare/?models=%C2%B2",
])
def test_out_of_range_ids_are_refused_not_server_errors(client, path):
    user = UserFactory(username="ranger")
    client.force_login(user)
    response = client.get(path)
    assert response.status_code in (200, 400, 404)


@pytest.mark.django_db
def test_out_of_range_model_on_the_batch_page(client):
    client.force_login(UserFactory(username="batcher"))
    for value in (HUGE, "²"):
        response = client.post("/inference/", {"model": value, "split": "test"})
        assert response.status_code == 400
        assert b"choose a model" in response.content

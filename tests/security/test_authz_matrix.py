"""Who may read, change and use what: every route of the site, for four actors.

The actors are an anonymous visitor, two ordinary users A and B who each own a dataset, a spare
dataset, a model, a training job, a batch inference job and a prediction, and a staff member.
The rules the code follows (``OwnedQuerySet.visible_to``, ``classifier.selectors``):

* anonymous visitors are sent to the log-in page (pages) or refused with 401 (API);
* a user sees their own rows and public ones (built-in datasets, models published by staff);
  another user's private dataset, model, job or prediction is reported missing (404), and a
  reference to one in a request body is refused (400) without creating anything;
* a public model may be read and used by every user, but its dataset's images stay private
  when the dataset is: no batch inference on a split of a dataset the user cannot see;
* staff see and manage every dataset, model and job, and alone change aliases; prediction
  history is personal, so staff do not see other users' predictions either;
* the admin is for staff only.

``MATRIX`` maps every URL pattern of ``get_resolver()`` to its probes; a route without an entry
(or a rule covering it) fails :func:`test_every_route_is_in_the_matrix`, so a new route cannot
be added without deciding who may use it.
"""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.core.files.base import ContentFile
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.utils import timezone
from rest_framework.authtoken.models import Token

from classifier.models import (
    Dataset,
    ModelAlias,
    ModelAliasChange,
    ModelVersion,
    Prediction,
    Visibility,
)
from tests.factories import DatasetFactory, ModelVersionFactory, UserFactory, png_bytes
from training.models import InferenceJob, TrainingJob

ANON, A, B, STAFF = "anonymous", "A", "B", "staff"
ACTORS = (ANON, A, B, STAFF)
LOGIN = "login"  # a redirect to the site's log-in page
ADMIN_LOGIN = "admin-login"  # a redirect to the admin's log-in page

PAGE_USERS = {ANON: LOGIN, A: 200, B: 200, STAFF: 200}
PAGE_OWNER = {ANON: LOGIN, A: 200, B: 404, STAFF: 200}
API_USERS = {ANON: 401, A: 200, B: 200, STAFF: 200}
API_OWNER = {ANON: 401, A: 200, B: 404, STAFF: 200}
PUBLIC = dict.fromkeys(ACTORS, 200)


# --- the objects -------------------------------------------------------------------------------


@dataclass
class World:
    users: dict
    ids: dict = field(default_factory=dict)

    def fill(self, template: str) -> str:
        return template.format(**self.ids)


def _owned_objects(world: World, key: str, user, marker: str, public_dataset: Dataset) -> None:
    dataset = DatasetFactory(owner=user, name=f"{marker}-dataset")
    spare = DatasetFactory(owner=user, name=f"{marker}-spare")
    model = ModelVersionFactory(dataset=dataset, owner=user, name=f"{marker}-model")
    job = TrainingJob.objects.create(
        owner=user, dataset=dataset, name=f"{marker}-run", config={"epochs": 1}, preset="smoke",
        total_epochs=1, status=TrainingJob.Status.SUCCEEDED, model_version=model,
        finished_at=timezone.now(),
    )
    batch = InferenceJob.objects.create(
        owner=user, model_version=model, source=InferenceJob.Source.UPLOAD,
        input_name=f"{marker}-batch.npz", status=InferenceJob.Status.SUCCEEDED, total=1, done=1,
        finished_at=timezone.now(),
    )
    batch.results_csv.save(f"{marker}.csv", ContentFile(b"index,predicted\n0,adenoma\n"))
    batch.results_json.save(f"{marker}.json", ContentFile(b'[{"index": 0}]'))
    prediction = Prediction(
        owner=user, model_version=model, image_content_type="image/png", image_sha256="0" * 64,
        original_name=f"{marker}-scan.png", predicted_index=0, predicted_label="adenoma",
        probabilities={"adenoma": 0.7, "carcinoma": 0.2, "normal": 0.1},
    )
    prediction.image.save(f"{marker}.png", ContentFile(png_bytes()), save=False)
    prediction.save()
    world.ids.update({
        f"{key}_dataset": dataset.pk, f"{key}_spare": spare.pk, f"{key}_model": model.pk,
        f"{key}_job": job.pk, f"{key}_batch": batch.pk, f"{key}_prediction": prediction.pk,
    })


def build_world() -> World:
    users = {
        A: UserFactory(username="user-a"),
        B: UserFactory(username="user-b"),
        STAFF: UserFactory(username="staff-member", staff=True),
    }
    world = World(users=users)
    # Log-in failures are counted in the cache, which CI shares between runs: a name and an
    # address of this world's own keep the token probe's failures from adding up.
    world.ids["stranger_name"] = f"nobody-{uuid.uuid4().hex[:12]}"
    world.ids["address"] = f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"
    public = DatasetFactory(builtin=True, name="builtin-dataset")
    world.ids["public_dataset"] = public.pk
    _owned_objects(world, "a", users[A], "alpha", public)
    _owned_objects(world, "b", users[B], "bravo", public)
    # Shared notions: B's model published on the built-in dataset, and A's model published
    # while its dataset stays private (the model is shared, the dataset's images are not).
    shared = ModelVersionFactory(dataset=public, owner=users[B], name="bravo-shared-model",
                                 visibility=Visibility.PUBLIC)
    hidden = ModelVersionFactory(dataset_id=world.ids["a_dataset"], owner=users[A],
                                 name="alpha-published-model", visibility=Visibility.PUBLIC)
    world.ids.update({"b_shared_model": shared.pk, "a_published_model": hidden.pk})
    return world


# --- probes ------------------------------------------------------------------------------------


@dataclass
class Probe:
    """One request, the answer expected for each actor, and what must hold afterwards.

    ``expect`` maps actors to a status, a set of statuses, ``LOGIN`` or ``ADMIN_LOGIN``; actors
    left out are not sent this request. ``shows``/``hides`` map actors to markers that must
    (not) appear in the answer. ``unchanged`` is evaluated before and after a refused request
    and must give the same value (nothing created, changed or deleted).
    """

    method: str
    path: str
    expect: dict
    data: dict | None = None
    json: bool = False
    shows: dict = field(default_factory=dict)
    hides: dict = field(default_factory=dict)
    unchanged: Callable[[World], object] | None = None
    fresh: bool = False  # the request changes the world: each actor's change is rolled back

    def run(self, world: World, client: Client):
        path = world.fill(self.path)
        data = {k: world.fill(v) if isinstance(v, str) else v for k, v in (self.data or {}).items()}
        if "images" in data:
            data["images"] = io.BytesIO(png_bytes())
            data["images"].name = "probe.png"
        if self.json:
            return getattr(client, self.method)(path, data, content_type="application/json")
        return getattr(client, self.method)(path, data)


def exists(model, key):
    return lambda world: model.objects.filter(pk=world.ids[key]).exists()


def count(model):
    return lambda world: model.objects.count()


def alias_count(world):
    return ModelAlias.objects.count()


def aliases_and_trail(world):
    return ModelAlias.objects.count(), ModelAliasChange.objects.count()


DATASETS = {"shows": {A: ["alpha-dataset"], B: ["bravo-dataset"],
                      STAFF: ["alpha-dataset", "bravo-dataset"]},
            "hides": {A: ["bravo-dataset"], B: ["alpha-dataset"]}}
MODELS = {"shows": {A: ["alpha-model", "bravo-shared-model"],
                    B: ["bravo-model", "bravo-shared-model", "alpha-published-model"],
                    STAFF: ["alpha-model", "bravo-model", "alpha-published-model"]},
          "hides": {A: ["bravo-model"], B: ["alpha-model"]}}
JOBS = {"shows": {A: ["alpha-run"], B: ["bravo-run"], STAFF: ["alpha-run", "bravo-run"]},
        "hides": {A: ["bravo-run"], B: ["alpha-run"]}}
BATCHES = {"shows": {A: ["alpha-batch"], B: ["bravo-batch"], STAFF: ["alpha-batch", "bravo-batch"]},
           "hides": {A: ["bravo-batch"], B: ["alpha-batch"]}}
# Prediction history is personal, staff included.
PREDICTIONS = {"shows": {A: ["alpha-scan"], B: ["bravo-scan"]},
               "hides": {A: ["bravo-scan"], B: ["alpha-scan"], STAFF: ["alpha-scan", "bravo-scan"]}}

PAGE_ACTION = {ANON: LOGIN, A: 302, B: 404, STAFF: 302}  # a POST that redirects with a message
B_USES = {ANON: 401, B: 400}  # B refers to A's object in a request body


MATRIX: dict[str, list[Probe]] = {
    # --- site pages ---
    "": [Probe("get", "/", PAGE_USERS, shows={A: ["alpha-spare"], B: ["bravo-spare"],
                                              STAFF: ["alpha-spare", "bravo-spare"]},
               hides={A: ["bravo-spare", "bravo-model"], B: ["alpha-spare", "alpha-model"]})],
    "login/": [Probe("get", "/login/", PUBLIC)],
    "logout/": [Probe("post", "/logout/", dict.fromkeys(ACTORS, 302))],
    "healthz": [Probe("get", "/healthz", {actor: {200, 503} for actor in ACTORS})],
    "datasets/": [Probe("get", "/datasets/", PAGE_USERS, **DATASETS)],
    "datasets/import/": [Probe("get", "/datasets/import/", PAGE_USERS)],
    "datasets/<int:pk>/": [
        Probe("get", "/datasets/{a_dataset}/", PAGE_OWNER),
        Probe("get", "/datasets/{public_dataset}/", PAGE_USERS),
    ],
    "datasets/<int:pk>/delete/": [
        Probe("post", "/datasets/{a_spare}/delete/", PAGE_ACTION,
              unchanged=exists(Dataset, "a_spare"), fresh=True),
        Probe("post", "/datasets/{public_dataset}/delete/", {A: 403, B: 403},
              unchanged=exists(Dataset, "public_dataset")),
    ],
    "classify/": [Probe("get", "/classify/", PAGE_USERS, **MODELS)],
    "predictions/": [
        Probe("get", "/predictions/", PAGE_USERS, **PREDICTIONS),
        Probe("get", "/predictions/?model={a_model}", {B: 200}, hides={B: ["alpha-scan"]}),
    ],
    "predictions/<int:pk>/delete/": [
        Probe("post", "/predictions/{a_prediction}/delete/",
              {ANON: LOGIN, A: 302, B: 404, STAFF: 404},
              unchanged=exists(Prediction, "a_prediction"), fresh=True),
    ],
    "models/": [
        Probe("get", "/models/", PAGE_USERS, **MODELS),
        Probe("get", "/models/?dataset={a_dataset}", PAGE_OWNER),
    ],
    "models/compare/": [
        Probe("get", "/models/compare/?models={a_model}", PAGE_OWNER),
        Probe("get", "/models/compare/?dataset={public_dataset}&models={b_shared_model}",
              PAGE_USERS),
    ],
    "models/<int:pk>/": [
        Probe("get", "/models/{a_model}/", PAGE_OWNER),
        Probe("get", "/models/{a_published_model}/", PAGE_USERS),
        Probe("get", "/models/{b_shared_model}/", PAGE_USERS),
    ],
    "models/<int:pk>/promote/": [
        Probe("post", "/models/{a_model}/promote/", {ANON: LOGIN, A: 403, B: 404, STAFF: 302},
              data={"alias": "production", "reason": "probe"}, unchanged=alias_count),
        Probe("post", "/models/{b_shared_model}/promote/", {A: 403},
              data={"alias": "production", "reason": "probe"}, unchanged=alias_count),
    ],
    "models/<int:pk>/evaluate/": [Probe("post", "/models/{a_model}/evaluate/", PAGE_ACTION)],
    # A's model ran A's batch job: refused (a message) for its owner and staff alike.
    "models/<int:pk>/delete/": [
        Probe("post", "/models/{a_model}/delete/", PAGE_ACTION,
              unchanged=exists(ModelVersion, "a_model"), fresh=True),
        Probe("post", "/models/{b_shared_model}/delete/", {A: 403},
              unchanged=exists(ModelVersion, "b_shared_model")),
    ],
    "models/<int:pk>/threshold/": [
        Probe("post", "/models/{a_model}/threshold/", PAGE_ACTION, data={"clear": "1"}),
        Probe("post", "/models/{b_shared_model}/threshold/", {A: 403}, data={"clear": "1"}),
    ],
    "datasets/<int:pk>/aliases/<slug:alias>/rollback/": [
        Probe("post", "/datasets/{a_dataset}/aliases/production/rollback/",
              {ANON: LOGIN, A: 403, B: 404, STAFF: 302}, data={"reason": "probe"},
              unchanged=alias_count),
    ],
    # Staff are told (a message) that the dataset has no such alias.
    "datasets/<int:pk>/aliases/<slug:alias>/remove/": [
        Probe("post", "/datasets/{a_dataset}/aliases/production/remove/",
              {ANON: LOGIN, A: 403, B: 404, STAFF: 302}, data={"reason": "probe"},
              unchanged=aliases_and_trail),
        Probe("post", "/datasets/{public_dataset}/aliases/production/remove/",
              {A: 403, B: 403}, data={"reason": "probe"}, unchanged=aliases_and_trail),
    ],
    "jobs/": [Probe("get", "/jobs/", PAGE_USERS, **JOBS)],
    "jobs/new/": [
        Probe("get", "/jobs/new/", PAGE_USERS, **DATASETS),
        Probe("post", "/jobs/new/", {ANON: LOGIN, B: 200}, data={"dataset": "{a_dataset}",
              "preset": "smoke"}, unchanged=count(TrainingJob)),
    ],
    "jobs/<int:pk>/": [Probe("get", "/jobs/{a_job}/", PAGE_OWNER)],
    "jobs/<int:pk>/cancel/": [Probe("post", "/jobs/{a_job}/cancel/", PAGE_ACTION,
                                    unchanged=count(TrainingJob))],
    "jobs/<int:pk>/retry/": [Probe("post", "/jobs/{a_job}/retry/", PAGE_ACTION,
                                   unchanged=count(TrainingJob))],
    "jobs/<int:pk>/delete/": [Probe("post", "/jobs/{a_job}/delete/", PAGE_ACTION,
                                    unchanged=exists(TrainingJob, "a_job"), fresh=True)],
    "inference/": [
        Probe("get", "/inference/", PAGE_USERS, **BATCHES),
        Probe("post", "/inference/", {ANON: LOGIN, B: 400},
              data={"model": "{a_model}", "split": "test"}, unchanged=count(InferenceJob)),
        Probe("post", "/inference/", {B: 400},
              data={"model": "{a_published_model}", "split": "test"}, unchanged=count(InferenceJob)),
    ],
    "inference/<int:pk>/": [Probe("get", "/inference/{a_batch}/", PAGE_OWNER)],
    "inference/<int:pk>/delete/": [
        Probe("post", "/inference/{a_batch}/delete/", PAGE_ACTION,
              unchanged=exists(InferenceJob, "a_batch"), fresh=True),
    ],
    # --- API ---
    "api/v1/": [Probe("get", "/api/v1/", API_USERS)],
    "api/v1/auth/token/": [
        Probe("post", "/api/v1/auth/token/", dict.fromkeys(ACTORS, 400),
              data={"username": "{stranger_name}", "password": "not-the-password"}),
        # Revoking: one's own token only (the body names nobody), so anyone logged in may.
        Probe("delete", "/api/v1/auth/token/", {ANON: 401, A: 204, B: 204, STAFF: 204},
              unchanged=count(Token), fresh=True),
    ],
    "api/v1/auth/token/rotate/": [
        Probe("post", "/api/v1/auth/token/rotate/", {ANON: 401, A: 200, B: 200, STAFF: 200},
              unchanged=count(Token), fresh=True),
    ],
    "api/v1/schema/": [Probe("get", "/api/v1/schema/", PUBLIC)],
    "api/v1/docs/": [Probe("get", "/api/v1/docs/", PUBLIC)],
    "api/v1/architectures/": [Probe("get", "/api/v1/architectures/", API_USERS)],
    "api/v1/presets/": [Probe("get", "/api/v1/presets/", API_USERS)],
    "api/v1/^training-jobs/$": [
        Probe("get", "/api/v1/training-jobs/", API_USERS, **JOBS),
        Probe("post", "/api/v1/training-jobs/", B_USES, json=True,
              data={"dataset": "{a_dataset}", "preset": "smoke"}, unchanged=count(TrainingJob)),
    ],
    "api/v1/^training-jobs/(?P<pk>[^/.]+)/$": [
        Probe("get", "/api/v1/training-jobs/{a_job}/", API_OWNER),
        Probe("delete", "/api/v1/training-jobs/{a_job}/", {ANON: 401, A: 204, B: 404, STAFF: 204},
              unchanged=exists(TrainingJob, "a_job"), fresh=True),
    ],
    "api/v1/^training-jobs/(?P<pk>[^/.]+)/cancel/$": [
        Probe("post", "/api/v1/training-jobs/{a_job}/cancel/", {ANON: 401, A: 409, B: 404, STAFF: 409},
              unchanged=count(TrainingJob))],
    "api/v1/^training-jobs/(?P<pk>[^/.]+)/retry/$": [
        Probe("post", "/api/v1/training-jobs/{a_job}/retry/", {ANON: 401, A: 409, B: 404, STAFF: 409},
              unchanged=count(TrainingJob))],
    "api/v1/^inference-jobs/$": [
        Probe("get", "/api/v1/inference-jobs/", API_USERS, **BATCHES),
        Probe("post", "/api/v1/inference-jobs/", B_USES, data={"model": "{a_model}", "split": "test"},
              unchanged=count(InferenceJob)),
    ],
    "api/v1/^inference-jobs/(?P<pk>[^/.]+)/$": [
        Probe("get", "/api/v1/inference-jobs/{a_batch}/", API_OWNER),
        Probe("delete", "/api/v1/inference-jobs/{a_batch}/",
              {ANON: 401, A: 204, B: 404, STAFF: 204},
              unchanged=exists(InferenceJob, "a_batch"), fresh=True),
    ],
    "api/v1/^inference-jobs/(?P<pk>[^/.]+)/results/(?P<kind>csv|json)/$": [
        Probe("get", "/api/v1/inference-jobs/{a_batch}/results/csv/", API_OWNER),
        Probe("get", "/api/v1/inference-jobs/{a_batch}/results/json/", API_OWNER),
    ],
    "api/v1/models/compare/": [
        Probe("get", "/api/v1/models/compare/?dataset={a_dataset}&models={a_model}", API_OWNER),
        Probe("get", "/api/v1/models/compare/?dataset={public_dataset}&models={b_shared_model}",
              API_USERS),
    ],
    "api/v1/models/<int:pk>/promote/": [
        Probe("post", "/api/v1/models/{a_model}/promote/", {ANON: 401, A: 403, B: 404, STAFF: 200},
              data={"reason": "probe"}, json=True, unchanged=alias_count),
    ],
    "api/v1/models/<int:pk>/card/": [
        Probe("get", "/api/v1/models/{a_model}/card/", API_OWNER),
        Probe("get", "/api/v1/models/{a_published_model}/card/", API_USERS),
    ],
    "api/v1/models/<int:pk>/export/": [
        # The placeholder artifact fails verification (409) once the request is let through.
        Probe("get", "/api/v1/models/{a_model}/export/", {ANON: 401, A: 409, B: 404, STAFF: 409}),
    ],
    "api/v1/models/<int:pk>/evaluate/": [
        Probe("post", "/api/v1/models/{a_model}/evaluate/", {ANON: 401, A: 409, B: 404, STAFF: 409}),
        Probe("post", "/api/v1/models/{b_shared_model}/evaluate/", {A: 403}),
    ],
    "api/v1/models/<int:pk>/threshold/": [
        Probe("delete", "/api/v1/models/{a_model}/threshold/", API_OWNER),
        Probe("post", "/api/v1/models/{a_model}/threshold/", {ANON: 401, A: 400, B: 404, STAFF: 400},
              data={"target_sensitivity": 0.9}, json=True),
        Probe("delete", "/api/v1/models/{b_shared_model}/threshold/", {A: 403}),
    ],
    "api/v1/datasets/<int:pk>/aliases/": [
        Probe("get", "/api/v1/datasets/{a_dataset}/aliases/", API_OWNER)],
    "api/v1/datasets/<int:pk>/aliases/<slug:alias>/rollback/": [
        Probe("post", "/api/v1/datasets/{a_dataset}/aliases/production/rollback/",
              {ANON: 401, A: 403, B: 404, STAFF: 409}, data={"reason": "probe"}, json=True,
              unchanged=alias_count),
    ],
    "api/v1/datasets/<int:pk>/aliases/<slug:alias>/remove/": [
        Probe("post", "/api/v1/datasets/{a_dataset}/aliases/production/remove/",
              {ANON: 401, A: 403, B: 404, STAFF: 404}, data={"reason": "probe"}, json=True,
              unchanged=aliases_and_trail),
        Probe("post", "/api/v1/datasets/{public_dataset}/aliases/production/remove/",
              {A: 403, B: 403}, data={"reason": "probe"}, json=True, unchanged=aliases_and_trail),
    ],
    "api/v1/^datasets/$": [
        Probe("get", "/api/v1/datasets/", API_USERS, **DATASETS),
        Probe("post", "/api/v1/datasets/", {ANON: 401}, data={"name": "x"},
              unchanged=count(Dataset)),
    ],
    "api/v1/^datasets/(?P<pk>[^/.]+)/$": [
        Probe("get", "/api/v1/datasets/{a_dataset}/", API_OWNER),
        Probe("get", "/api/v1/datasets/{public_dataset}/", API_USERS),
        Probe("delete", "/api/v1/datasets/{a_spare}/", {ANON: 401, A: 204, B: 404, STAFF: 204},
              unchanged=exists(Dataset, "a_spare"), fresh=True),
        Probe("delete", "/api/v1/datasets/{public_dataset}/", {A: 403, B: 403},
              unchanged=exists(Dataset, "public_dataset")),
    ],
    "api/v1/^datasets/(?P<pk>[^/.]+)/images/(?P<split>train|val|test)/(?P<index>\\d+)/$": [
        Probe("get", "/api/v1/datasets/{a_dataset}/images/train/0/", API_OWNER)],
    "api/v1/^datasets/(?P<pk>[^/.]+)/samples/$": [
        Probe("get", "/api/v1/datasets/{a_dataset}/samples/", API_OWNER)],
    "api/v1/^models/$": [
        Probe("get", "/api/v1/models/", API_USERS, **MODELS),
        Probe("get", "/api/v1/models/?dataset={a_dataset}", {B: 200}, hides={B: ["alpha-model"]}),
    ],
    "api/v1/^models/(?P<pk>[^/.]+)/$": [
        Probe("get", "/api/v1/models/{a_model}/", API_OWNER),
        Probe("get", "/api/v1/models/{a_published_model}/", API_USERS),
        Probe("get", "/api/v1/models/{b_shared_model}/", API_USERS),
        Probe("delete", "/api/v1/models/{a_model}/", {ANON: 401, A: 409, B: 404, STAFF: 409},
              unchanged=exists(ModelVersion, "a_model"), fresh=True),
        Probe("delete", "/api/v1/models/{b_shared_model}/", {A: 403},
              unchanged=exists(ModelVersion, "b_shared_model")),
    ],
    "api/v1/^predictions/$": [
        Probe("get", "/api/v1/predictions/", API_USERS, **PREDICTIONS),
        Probe("get", "/api/v1/predictions/?model={a_model}", {B: 200}, hides={B: ["alpha-scan"]}),
        Probe("post", "/api/v1/predictions/", B_USES, data={"model": "{a_model}", "images": True},
              unchanged=count(Prediction)),
        Probe("post", "/api/v1/predictions/", {B: 400},
              data={"dataset": "{a_dataset}", "images": True}, unchanged=count(Prediction)),
    ],
    "api/v1/^predictions/(?P<pk>[^/.]+)/$": [
        Probe("get", "/api/v1/predictions/{a_prediction}/", {ANON: 401, A: 200, B: 404, STAFF: 404}),
        Probe("delete", "/api/v1/predictions/{a_prediction}/", {ANON: 401, A: 204, B: 404, STAFF: 404},
              unchanged=exists(Prediction, "a_prediction"), fresh=True),
    ],
    "api/v1/^predictions/(?P<pk>[^/.]+)/image/$": [
        Probe("get", "/api/v1/predictions/{a_prediction}/image/",
              {ANON: 401, A: 200, B: 404, STAFF: 404})],
}

# --- routes ------------------------------------------------------------------------------------


def all_routes(patterns=None, prefix="", namespace=""):
    """``(route, name)`` of every URL pattern, descending into includes."""
    for pattern in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from all_routes(pattern.url_patterns, prefix + str(pattern.pattern), inner)
        elif isinstance(pattern, URLPattern):
            name = f"{namespace}{pattern.name}" if pattern.name else None
            yield prefix + str(pattern.pattern), name


def is_admin(route: str) -> bool:
    return route.startswith("admin/")


def routes_of(kind: str) -> list[str]:
    routes = sorted({route for route, _ in all_routes()})
    return [r for r in routes if is_admin(r) == (kind == "admin")]


def test_every_route_is_in_the_matrix():
    """Each route has probes, or a rule (admin routes: staff only). A route added without an
    entry fails here, and so does an entry for a route that is gone."""
    uncovered = [r for r in routes_of("site") if r not in MATRIX]
    assert not uncovered, f"routes without an entry in the authorization matrix: {uncovered}"
    stale = [r for r in MATRIX if r not in routes_of("site")]
    assert not stale, f"matrix entries for routes that no longer exist: {stale}"
    assert all(MATRIX[r] for r in MATRIX)
    assert routes_of("admin")


# --- running the probes ------------------------------------------------------------------------


def client_for(world: World, actor: str) -> Client:
    client = Client(REMOTE_ADDR=world.ids["address"])
    if actor != ANON:
        client.force_login(world.users[actor])
    return client


def check(probe: Probe, world: World, actor: str, response) -> None:
    wanted = probe.expect[actor]
    where = f"{actor} {probe.method.upper()} {world.fill(probe.path)}"
    if wanted in (LOGIN, ADMIN_LOGIN):
        target = "/login/" if wanted == LOGIN else "/admin/login/"
        assert response.status_code == 302, f"{where}: {response.status_code}, not sent to log in"
        assert response["Location"].startswith(target), f"{where}: sent to {response['Location']}"
        return
    allowed = wanted if isinstance(wanted, set) else {wanted}
    assert response.status_code in allowed, (
        f"{where}: {response.status_code}, expected {sorted(allowed)}: {response.content[:300]!r}"
    )
    body = b"" if getattr(response, "streaming", False) else response.content
    for marker in probe.shows.get(actor, []):
        assert marker.encode() in body, f"{where}: '{marker}' missing"
    for marker in probe.hides.get(actor, []):
        assert marker.encode() not in body, f"{where}: shows '{marker}' of another user"


def run_probe(probe: Probe, actor: str, world: World) -> None:
    before = probe.unchanged(world) if probe.unchanged else None
    response = probe.run(world, client_for(world, actor))
    check(probe, world, actor, response)
    refused = response.status_code >= 400 or probe.expect[actor] in (LOGIN, ADMIN_LOGIN)
    if probe.unchanged and refused:
        assert probe.unchanged(world) == before, (
            f"{actor} {probe.method.upper()} {world.fill(probe.path)} was refused "
            f"({response.status_code}) but changed something"
        )


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_of("site"))
def test_route(route, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False  # a probe that queued work by mistake must not run it
    world = build_world()
    for probe in MATRIX[route]:
        for actor in [a for a in (ANON, B, STAFF, A) if a in probe.expect]:
            if probe.fresh:  # each actor finds the world as it was built
                with transaction.atomic():
                    run_probe(probe, actor, world)
                    transaction.set_rollback(True)
            else:
                run_probe(probe, actor, world)


# --- the admin ---------------------------------------------------------------------------------

ADMIN_ARGUMENTS = {"app_label": "classifier", "object_id": "1", "content_type_id": "1",
                   "url": "nothing-here/"}


def admin_path(route: str) -> str:
    """A concrete path for an admin route, its parameters filled with plausible values."""
    path = "/" + route
    path = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: ADMIN_ARGUMENTS.get(m.group(1), "1"), path)
    path = re.sub(r"\^?\(\?P<(\w+)>[^)]*\)", lambda m: ADMIN_ARGUMENTS.get(m.group(1), "1"), path)
    return path.replace("^", "").replace("$", "")


@pytest.mark.django_db
@pytest.mark.parametrize("route", routes_of("admin"))
def test_admin_route_is_staff_only(route):
    """Rule for ``admin/``: everyone but staff is sent to the admin's log-in page."""
    world = build_world()
    path = admin_path(route)
    for actor in ACTORS:
        response = client_for(world, actor).get(path)
        where = f"{actor} GET {path}"
        if route in ("admin/login/", "admin/logout/"):
            assert response.status_code < 500, where
            continue
        if actor == STAFF:
            assert response.status_code < 500, f"{where}: {response.status_code}"
            assert not response.get("Location", "").startswith("/admin/login/"), where
        else:
            assert response.status_code == 302, f"{where}: {response.status_code}"
            assert response["Location"].startswith("/admin/login/"), where


# --- regressions: holes found by the matrix ----------------------------------------------------------


@pytest.mark.django_db
def test_api_batch_inference_on_a_split_of_an_invisible_dataset_is_refused(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = False
    world = build_world()
    probe = Probe("post", "/api/v1/inference-jobs/", {B: 400},
                  data={"model": "{a_published_model}", "split": "test"},
                  unchanged=count(InferenceJob))
    run_probe(probe, B, world)


@pytest.mark.django_db
def test_classifying_with_a_model_whose_artifact_is_missing_is_not_a_server_error():
    world = build_world()
    probe = Probe("post", "/api/v1/predictions/", {B: 409},
                  data={"model": "{a_published_model}", "images": True},
                  unchanged=count(Prediction))
    client = client_for(world, B)
    client.raise_request_exception = False
    response = probe.run(world, client)
    assert response.status_code == 409

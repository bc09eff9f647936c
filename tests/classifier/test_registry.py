"""The model registry: evaluation, decision thresholds, aliases with their audit trail, cards, exports.

Models here are real ``.keras`` files of tiny compact CNNs with random weights: evaluating them
runs the same loading and batch inference as a trained model, in a fraction of a second.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from django.contrib.admin.sites import site as admin_site
from django.test import Client
from rest_framework.test import APIClient

from classifier import selectors, services, services_registry
from classifier.models import (
    ModelAlias,
    ModelAliasChange,
    ModelEvaluation,
    ModelVersion,
    Visibility,
)
from classifier.selectors import default_model_for
from medml import export
from medml.architectures import build_model
from tests.factories import PASSWORD, DatasetFactory, UserFactory

pytestmark = pytest.mark.django_db

BREAST_NAMES = ["malignant", "normal, benign"]
BREAST_COUNTS = {"train": [6, 6], "val": [10, 10], "test": [8, 8]}


# --- helpers shared with the comparison tests ---------------------------------------------------


def saved_model_file(folder: Path, *, input_shape=(28, 28, 3), num_classes=3, seed=0) -> Path:
    """A compact CNN with random weights (fixed by ``seed``), saved as ``.keras``."""
    keras.utils.set_random_seed(seed)
    path = folder / f"cnn-{input_shape[-1]}-{num_classes}-{seed}.keras"
    if not path.exists():
        build_model("compact_cnn", input_shape=input_shape, num_classes=num_classes,
                    width=4).save(path)
    return path


def register_model(dataset, owner, path: Path, *, name: str, val_accuracy=None,
                   visibility=Visibility.PRIVATE, history=None) -> ModelVersion:
    model = services.model_version_register(
        name=name, architecture="compact_cnn", dataset=dataset, owner=owner, artifact_path=path,
        config={"width": 4}, val_metrics={"accuracy": val_accuracy} if val_accuracy else {},
        history=history or [], num_params=1234, train_seconds=5.5,
    )
    if visibility != model.visibility:
        ModelVersion.objects.filter(pk=model.pk).update(visibility=visibility)
        model.refresh_from_db()
    return model


def keras_probabilities(model_version: ModelVersion, images: np.ndarray) -> np.ndarray:
    """The model's outputs computed here, independently of the registry code."""
    with model_version.artifact.open("rb") as handle:
        data = handle.read()
    path = Path(model_version.artifact.path).with_suffix(".copy.keras")
    path.write_bytes(data)
    return keras.models.load_model(path, compile=False)(images, training=False).numpy()


@pytest.fixture(autouse=True)
def fast_evaluation(settings, tmp_path):
    settings.MODEL_EVALUATION_BOOTSTRAP = 200
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    settings.WORK_DIR = tmp_path / "work"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-files")


@pytest.fixture
def owner():
    return UserFactory(username="olive")


@pytest.fixture
def staff():
    return UserFactory(username="stella", staff=True)


@pytest.fixture
def dataset(owner):
    return DatasetFactory(owner=owner, name="Tiny blood")


@pytest.fixture
def breast(owner):
    return DatasetFactory(owner=owner, name="Tiny breast", class_counts=BREAST_COUNTS,
                          class_names=BREAST_NAMES, channels=1)


@pytest.fixture
def models(dataset, owner, model_files):
    """Three models of the 3-class dataset: a, b, c."""
    return [register_model(dataset, owner, saved_model_file(model_files, seed=seed), name=name)
            for seed, name in enumerate(["a", "b", "c"])]


@pytest.fixture
def breast_model(breast, owner, model_files):
    path = saved_model_file(model_files, input_shape=(28, 28, 1), num_classes=2, seed=4)
    return register_model(breast, owner, path, name="breast")


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


# --- evaluation ----------------------------------------------------------------------------------


def test_evaluating_a_model_stores_its_full_report_and_its_per_image_test_predictions(models, dataset):
    model = models[0]
    evaluation = services_registry.model_version_evaluate(model_version=model)

    arrays = selectors.dataset_arrays(dataset=dataset)
    expected = keras_probabilities(model, arrays.images("test"))
    assert evaluation.n == 12 and evaluation.split == "test"
    assert evaluation.dataset_sha256 == dataset.sha256
    assert evaluation.predicted == expected.argmax(axis=1).tolist()
    np.testing.assert_allclose(services_registry.evaluation_probabilities(evaluation), expected,
                               atol=1e-5)

    model.refresh_from_db()
    assert model.metrics["n"] == 12
    assert model.metrics["accuracy"] == pytest.approx(
        np.mean(expected.argmax(axis=1) == arrays.labels("test")))
    assert {"calibration", "roc", "confidence_intervals", "evaluation"} <= set(model.metrics)
    assert model.metrics["confidence_intervals"]["n_bootstrap"] == 200
    assert model.metrics["evaluation"]["ms_per_image"] > 0


def test_re_evaluating_keeps_one_evaluation_and_one_predictions_file(
        models, media_root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        services_registry.model_version_evaluate(model_version=models[0])
        services_registry.model_version_evaluate(model_version=models[0])
    assert ModelEvaluation.objects.filter(model_version=models[0]).count() == 1
    stored = list((Path(media_root) / "evaluations").iterdir())
    assert [p.name for p in stored] == [ModelEvaluation.objects.get().probabilities.name.split("/")[-1]]


def test_an_artifact_changed_after_registration_is_not_evaluated(models):
    Path(models[0].artifact.path).write_bytes(b"not the registered model")
    with pytest.raises(services.ArtifactIntegrityError):
        services_registry.model_version_evaluate(model_version=models[0])
    assert not ModelEvaluation.objects.exists()


def served_predictions(model: ModelVersion, images: np.ndarray) -> np.ndarray:
    """What serving predicts: class 1 when its probability reaches the decision threshold."""
    probs = keras_probabilities(model, images)
    return np.where(probs[:, 1] >= model.decision_threshold, 1, 0)


def test_a_threshold_is_chosen_on_validation_for_the_sensitivity_to_malignant_images(
        breast_model, breast):
    model = services_registry.model_version_set_threshold(model_version=breast_model,
                                                          target_sensitivity=0.9)
    model.refresh_from_db()
    point = model.val_metrics["operating_point"]
    assert point["positive_class"] == 0 and point["positive_class_name"] == "malignant"
    assert point["decision_threshold"] == model.decision_threshold

    arrays = selectors.dataset_arrays(dataset=breast)
    val_served = served_predictions(model, arrays.images("val"))
    malignant = arrays.labels("val") == 0
    assert np.mean(val_served[malignant] == 0) >= 0.9
    assert np.mean(val_served[malignant] == 0) == pytest.approx(point["sensitivity"])

    # The test report gives both rules; the threshold's numbers are what serving does.
    test_served = served_predictions(model, arrays.images("test"))
    test_labels = arrays.labels("test")
    at = model.metrics["at_threshold"]
    assert at["sensitivity"] == pytest.approx(np.mean(test_served[test_labels == 0] == 0))
    assert at["specificity"] == pytest.approx(np.mean(test_served[test_labels == 1] == 1))
    assert at["accuracy"] == pytest.approx(np.mean(test_served == test_labels))
    assert model.metrics["binary"]["positive_class"] == 0
    assert ModelEvaluation.objects.filter(model_version=model).count() == 2  # val and test


def test_clearing_the_threshold_goes_back_to_the_most_probable_class(breast_model):
    services_registry.model_version_set_threshold(model_version=breast_model, target_sensitivity=0.8)
    services_registry.model_version_clear_threshold(model_version=breast_model)
    breast_model.refresh_from_db()
    assert breast_model.decision_threshold is None
    assert "operating_point" not in breast_model.val_metrics
    assert "at_threshold" not in breast_model.metrics


def test_a_threshold_that_cannot_be_reported_is_refused_and_changes_nothing(breast_model, owner):
    from django.core.files.storage import default_storage

    services_registry.model_version_evaluate(model_version=breast_model, split="val")
    default_storage.delete(breast_model.artifact.name)  # no test predictions, and no model
    for copy in services_registry.model_cache_dir().iterdir():  # nor a local copy of it
        copy.unlink()
    response = api(owner).post(f"/api/v1/models/{breast_model.pk}/threshold/",
                               {"target_sensitivity": 0.9}, format="json")
    assert response.status_code == 409 and "missing" in response.json()["detail"]
    page = Client()
    page.force_login(owner)
    response = page.post(f"/models/{breast_model.pk}/threshold/", {"target_sensitivity": "0.9"},
                         follow=True)
    assert response.status_code == 200
    assert "nothing was changed" in response.content.decode()
    breast_model.refresh_from_db()
    assert breast_model.decision_threshold is None
    assert "operating_point" not in breast_model.val_metrics


def test_a_threshold_is_refused_for_a_model_with_more_than_two_classes(models, owner):
    with pytest.raises(services_registry.EvaluationError, match="two-class"):
        services_registry.model_version_set_threshold(model_version=models[0],
                                                      target_sensitivity=0.9)
    response = api(owner).post(f"/api/v1/models/{models[0].pk}/threshold/",
                               {"target_sensitivity": 0.9}, format="json")
    assert response.status_code == 400
    assert "two-class" in response.json()["target_sensitivity"][0]


def test_evaluating_without_test_images_is_a_400_whose_detail_is_a_string(
        breast_model, owner, monkeypatch):
    monkeypatch.setattr(services_registry, "model_version_evaluate", lambda **kwargs: None)
    response = api(owner).post(f"/api/v1/models/{breast_model.pk}/evaluate/")
    assert response.status_code == 400
    # A string like every other ``detail``, not a list of them.
    assert response.json() == {"detail": f"{breast_model.dataset} has no test images"}


def test_the_dataset_filter_of_the_models_list_is_checked_and_applies_to_the_list_only(
        models, breast_model, owner):
    client = api(owner)
    listed = client.get("/api/v1/models/", {"dataset": breast_model.dataset_id}).json()
    assert [row["id"] for row in listed["results"]] == [breast_model.pk]
    assert client.get("/api/v1/models/", {"dataset": "x"}).status_code == 400
    # A query parameter meant for the list neither refuses nor hides a model read by its id.
    assert client.get(f"/api/v1/models/{models[0].pk}/", {"dataset": "x"}).status_code == 200
    assert client.get(f"/api/v1/models/{models[0].pk}/",
                      {"dataset": breast_model.dataset_id}).status_code == 200


@pytest.mark.parametrize("params, status, key", [
    ({"models": "x"}, 400, "models"),
    ({"models": "1", "dataset": "999999"}, 404, "detail"),
])
def test_a_refused_csv_comparison_answers_json_not_a_python_repr(dataset, owner, params, status,
                                                                   key):
    response = api(owner).get("/api/v1/models/compare/",
                              {"dataset": dataset.pk, "format": "csv", **params})
    assert response.status_code == status
    assert response["Content-Type"] == "application/json"
    assert key in response.json()
    anonymous = APIClient().get("/api/v1/models/compare/", {"format": "csv"})
    assert anonymous.status_code == 401 and anonymous.json()["detail"]


def test_only_the_owner_or_staff_evaluate_a_model_or_set_its_threshold(breast_model, owner):
    ModelVersion.objects.filter(pk=breast_model.pk).update(visibility=Visibility.PUBLIC)
    other = api(UserFactory(username="otto"))
    assert other.post(f"/api/v1/models/{breast_model.pk}/evaluate/").status_code == 403
    assert other.post(f"/api/v1/models/{breast_model.pk}/threshold/",
                      {"target_sensitivity": 0.9}, format="json").status_code == 403
    assert not ModelEvaluation.objects.exists()

    response = api(owner).post(f"/api/v1/models/{breast_model.pk}/threshold/",
                               {"target_sensitivity": 0.9}, format="json")
    assert response.status_code == 200
    assert response.json()["operating_point"]["positive_class_name"] == "malignant"
    assert response.json()["test_at_threshold"]["sensitivity"] is not None


# --- aliases -------------------------------------------------------------------------------------


def changes(dataset) -> list[tuple]:
    return [(c.action, c.from_version and c.from_version.name, c.to_version.name, c.user.username,
             c.reason)
            for c in ModelAliasChange.objects.filter(dataset=dataset).order_by("created_at", "pk")]


def test_staff_promote_and_roll_back_with_an_audit_entry_for_every_change(models, dataset, staff):
    a, b, _ = models
    services_registry.model_alias_promote(model_version=a, user=staff, reason="first release")
    services_registry.model_alias_promote(model_version=b, user=staff, reason="better val acc")
    alias = services_registry.model_alias_rollback(dataset=dataset, alias="production",
                                                   user=staff, reason="b misreads platelets")

    assert alias.model_version == a
    assert ModelAlias.objects.get(dataset=dataset, name="production").model_version == a
    assert changes(dataset) == [
        ("promote", None, "a", "stella", "first release"),
        ("promote", "a", "b", "stella", "better val acc"),
        ("rollback", "b", "a", "stella", "b misreads platelets"),
    ]


def test_rollbacks_walk_back_through_the_promotions_in_order(models, dataset, staff):
    for model in models:
        services_registry.model_alias_promote(model_version=model, user=staff, reason="release")
    rollback = {"dataset": dataset, "alias": "production", "user": staff, "reason": "revert"}
    assert services_registry.model_alias_rollback(**rollback).model_version.name == "b"
    assert services_registry.model_alias_rollback(**rollback).model_version.name == "a"
    with pytest.raises(services_registry.AliasError, match="no earlier model"):
        services_registry.model_alias_rollback(**rollback)
    assert ModelAliasChange.objects.count() == 5


def test_promoting_the_model_an_alias_already_names_is_refused(models, staff):
    services_registry.model_alias_promote(model_version=models[0], user=staff, reason="release")
    response = api(staff).post(f"/api/v1/models/{models[0].pk}/promote/",
                               {"alias": "production", "reason": "again"}, format="json")
    assert response.status_code == 409
    assert "already is" in response.json()["detail"]
    assert ModelAliasChange.objects.count() == 1


def test_staff_promote_and_roll_back_through_the_api(models, dataset, staff):
    client = api(staff)
    for model in models[:2]:
        response = client.post(f"/api/v1/models/{model.pk}/promote/",
                               {"alias": "production", "reason": f"ship {model.name}"},
                               format="json")
        assert response.status_code == 200, response.content
    assert response.json()["model"] == models[1].pk
    canary = client.post(f"/api/v1/models/{models[2].pk}/promote/",
                         {"alias": "canary", "reason": "try c"}, format="json")
    assert canary.json()["name"] == "canary"

    response = client.post(f"/api/v1/datasets/{dataset.pk}/aliases/production/rollback/",
                           {"reason": "b regressed"}, format="json")
    assert response.status_code == 200
    assert response.json()["model"] == models[0].pk

    listing = client.get(f"/api/v1/datasets/{dataset.pk}/aliases/").json()
    assert {(a["name"], a["model"]) for a in listing["aliases"]} == {
        ("production", models[0].pk), ("canary", models[2].pk)}
    assert [(c["alias"], c["action"], c["reason"]) for c in listing["changes"]] == [
        ("production", "rollback", "b regressed"), ("canary", "promote", "try c"),
        ("production", "promote", "ship b"), ("production", "promote", "ship a")]
    assert listing["changes"][0]["from_version"]["id"] == models[1].pk
    assert listing["changes"][0]["user"] == "stella"


def test_a_private_model_is_not_promoted_on_a_dataset_every_user_sees(model_files, owner, staff):
    shared = DatasetFactory(builtin=True, name="Built-in blood")
    private = register_model(shared, owner, saved_model_file(model_files, seed=2), name="mine")
    with pytest.raises(services_registry.AliasError, match="publish the model first"):
        services_registry.model_alias_promote(model_version=private, user=staff, reason="ship")
    response = api(staff).post(f"/api/v1/models/{private.pk}/promote/", {"reason": "ship"},
                               format="json")
    assert response.status_code == 409 and "publish the model first" in response.json()["detail"]
    assert not ModelAlias.objects.exists()


def test_no_rollback_or_admin_change_leaves_a_public_datasets_alias_on_a_private_model(
        model_files, owner, staff):
    shared = DatasetFactory(builtin=True, name="Built-in blood")
    first, second = (register_model(shared, owner, saved_model_file(model_files, seed=seed),
                                    name=name, visibility=Visibility.PUBLIC)
                     for seed, name in ((1, "first"), (2, "second")))
    services_registry.model_alias_promote(model_version=first, user=staff, reason="one")
    services_registry.model_alias_promote(model_version=second, user=staff, reason="two")
    admin = Client()
    admin.force_login(UserFactory(username="root", superuser=True))

    # Making the production model private in the admin is refused, with the reason.
    page = admin.post(f"/admin/classifier/modelversion/{second.pk}/change/",
                      {"owner": owner.pk, "visibility": "private"})
    assert page.status_code == 200 and "Promote another model first" in page.content.decode()
    # Once the earlier model is private, rolling back to it is refused.
    ModelVersion.objects.filter(pk=first.pk).update(visibility=Visibility.PRIVATE)
    with pytest.raises(services_registry.AliasError, match="publish the model first"):
        services_registry.model_alias_rollback(dataset=shared, alias="production", user=staff,
                                               reason="back")
    assert ModelAlias.objects.get().model_version == second
    second.refresh_from_db()
    assert second.visibility == Visibility.PUBLIC

    # A private dataset whose alias names a private model is not published either.
    mine = DatasetFactory(owner=owner, name="Mine")
    kept = register_model(mine, owner, saved_model_file(model_files, seed=3), name="kept")
    services_registry.model_alias_promote(model_version=kept, user=staff, reason="mine")
    page = admin.post(f"/admin/classifier/dataset/{mine.pk}/change/",
                      {"name": mine.name, "slug": mine.slug, "owner": owner.pk,
                       "visibility": "public", "description": "", "modality": "",
                       "license": ""})
    assert "Publish that model or promote another first" in page.content.decode()
    mine.refresh_from_db()
    assert mine.visibility == Visibility.PRIVATE


def test_alias_lists_do_not_name_models_the_reader_cannot_see(model_files, owner, staff):
    shared = DatasetFactory(builtin=True, name="Built-in blood")
    public = register_model(shared, owner, saved_model_file(model_files, seed=1), name="public",
                            visibility=Visibility.PUBLIC)
    private = register_model(shared, owner, saved_model_file(model_files, seed=2),
                             name="olives-secret-study", visibility=Visibility.PUBLIC)
    services_registry.model_alias_promote(model_version=public, user=staff, reason="first")
    services_registry.model_alias_promote(model_version=private, user=staff, reason="second")
    ModelVersion.objects.filter(pk=private.pk).update(visibility=Visibility.PRIVATE)  # later
    reader = UserFactory(username="rae")

    listing = api(reader).get(f"/api/v1/datasets/{shared.pk}/aliases/").json()
    [alias] = listing["aliases"]
    assert (alias["model"], alias["model_name"], alias["visible_to_you"]) == (
        None, "a private model", False)
    assert [(c["from_version"], c["to_version"]) for c in listing["changes"]] == [
        ({"id": public.pk, "name": "public v1"}, {"id": None, "name": "a private model"}),
        (None, {"id": public.pk, "name": "public v1"})]
    page = Client()
    page.force_login(reader)
    html = page.get(f"/models/{public.pk}/").content.decode()
    assert "olives-secret-study" not in html and "a private model" in html
    # Their owner and staff see the names.
    assert api(owner).get(f"/api/v1/datasets/{shared.pk}/aliases/").json()["aliases"][0][
        "model_name"] == "olives-secret-study v1"


def test_a_user_who_is_not_staff_cannot_promote_or_roll_back_even_their_own_model(
        models, dataset, owner, staff):
    services_registry.model_alias_promote(model_version=models[0], user=staff, reason="release")
    with pytest.raises(services_registry.RegistryPermissionError):
        services_registry.model_alias_promote(model_version=models[1], user=owner, reason="mine")
    client = api(owner)
    assert client.post(f"/api/v1/models/{models[1].pk}/promote/",
                       {"reason": "mine"}, format="json").status_code == 403
    assert client.post(f"/api/v1/datasets/{dataset.pk}/aliases/production/rollback/",
                       {"reason": "undo"}, format="json").status_code == 403
    page = Client()
    page.force_login(owner)
    assert page.post(f"/models/{models[1].pk}/promote/", {"reason": "mine"}).status_code == 403
    assert ModelAlias.objects.get().model_version == models[0]
    assert ModelAliasChange.objects.count() == 1


def test_promoting_a_model_the_user_cannot_see_is_not_found(models):
    stranger = UserFactory(username="sid")
    response = api(stranger).post(f"/api/v1/models/{models[0].pk}/promote/",
                                  {"reason": "x"}, format="json")
    assert response.status_code == 404
    assert api(stranger).get(f"/api/v1/models/{models[0].pk}/card/").status_code == 404
    assert api(stranger).get(f"/api/v1/models/{models[0].pk}/export/").status_code == 404
    assert not ModelAlias.objects.exists()


def test_a_promotion_needs_a_reason_and_a_valid_alias_name(models, staff):
    client = api(staff)
    assert client.post(f"/api/v1/models/{models[0].pk}/promote/", {"alias": "production"},
                       format="json").status_code == 400
    with pytest.raises(services_registry.AliasError, match="reason"):
        services_registry.model_alias_promote(model_version=models[0], user=staff, reason="   ")
    response = client.post(f"/api/v1/models/{models[0].pk}/promote/",
                           {"alias": "Prod Uction", "reason": "x"}, format="json")
    assert response.status_code == 409 and "not an alias name" in response.json()["detail"]
    assert not ModelAliasChange.objects.exists()


def test_the_production_alias_is_the_default_model_for_users_who_can_see_it(
        dataset, owner, staff, model_files):
    weak = register_model(dataset, owner, saved_model_file(model_files, seed=0), name="weak",
                          val_accuracy=0.6)
    strong = register_model(dataset, owner, saved_model_file(model_files, seed=1), name="strong",
                            val_accuracy=0.9)
    assert default_model_for(dataset=dataset, user=owner) == strong  # no alias: best val acc

    services_registry.model_alias_promote(model_version=weak, user=staff, reason="audited")
    assert default_model_for(dataset=dataset, user=owner) == weak

    # A staff-only model as production: users who cannot see it get the best they can see.
    hidden = register_model(dataset, staff, saved_model_file(model_files, seed=2), name="hidden")
    services_registry.model_alias_promote(model_version=hidden, user=staff, reason="internal")
    assert default_model_for(dataset=dataset, user=owner) == strong
    assert default_model_for(dataset=dataset, user=staff) == hidden


# --- admin ---------------------------------------------------------------------------------------


def test_the_admin_action_promotes_to_production_and_says_why(models, dataset, staff):
    superuser = UserFactory(username="root", superuser=True)
    client = Client()
    client.force_login(superuser)
    response = client.post("/admin/classifier/modelversion/", {
        "action": "promote_to_production", "_selected_action": [models[1].pk],
    }, follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert f"Promoted {models[1]} to production for {dataset}" in text
    assert "reason: promoted from the admin by root" in text
    change = ModelAliasChange.objects.get()
    assert (change.to_version, change.user, change.reason) == (
        models[1], superuser, "promoted from the admin by root")


def test_the_alias_audit_trail_is_read_only_in_the_admin(models, staff):
    services_registry.model_alias_promote(model_version=models[0], user=staff, reason="release")
    client = Client()
    client.force_login(UserFactory(username="root", superuser=True))
    listing = client.get("/admin/classifier/modelaliaschange/")
    assert listing.status_code == 200 and "release" in listing.content.decode()
    assert client.get("/admin/classifier/modelaliaschange/add/").status_code == 403
    change = ModelAliasChange.objects.get()
    detail = client.get(f"/admin/classifier/modelaliaschange/{change.pk}/change/")
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert client.post(f"/admin/classifier/modelaliaschange/{change.pk}/delete/",
                       {"post": "yes"}).status_code == 403
    assert ModelAliasChange.objects.count() == 1
    assert admin_site.is_registered(ModelAlias)


# --- pages ---------------------------------------------------------------------------------------


def test_staff_promote_and_roll_back_from_the_model_page(models, dataset, staff):
    client = Client()
    client.force_login(staff)
    client.post(f"/models/{models[0].pk}/promote/", {"alias": "production", "reason": "v1"})
    response = client.post(f"/models/{models[1].pk}/promote/",
                           {"alias": "production", "reason": "v2"}, follow=True)
    assert f"{models[1]} is now production" in response.content.decode()
    response = client.post(f"/datasets/{dataset.pk}/aliases/production/rollback/",
                           {"reason": "v2 regressed"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain[-1][0] == f"/models/{models[0].pk}/"
    assert "v2 regressed" in page and "Roll back" in page
    assert [c[0] for c in changes(dataset)] == ["promote", "promote", "rollback"]


def test_the_model_page_shows_the_card_and_hides_staff_actions_from_others(models, owner):
    services_registry.model_version_evaluate(model_version=models[0])
    client = Client()
    client.login(username="olive", password=PASSWORD)
    page = client.get(f"/models/{models[0].pk}/").content.decode()
    assert "Model card: a v1" in page
    assert "95% CI" in page and "ECE (15 bins)" in page
    assert 'id="promote-form"' not in page and "Aliases are set by staff" in page
    assert f'href="/api/v1/models/{models[0].pk}/export/"' in page
    assert "1,234 parameters" in page  # thousands grouped
    assert '<td class="num">1,234</td>' in client.get("/models/").content.decode()


# --- model card ----------------------------------------------------------------------------------


def test_the_model_card_states_data_metrics_with_intervals_calibration_and_limits(models, dataset,
                                                                                   owner):
    services_registry.model_version_evaluate(model_version=models[0])
    models[0].refresh_from_db()
    response = api(owner).get(f"/api/v1/models/{models[0].pk}/card/")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/markdown")
    card = response.content.decode()

    interval = models[0].metrics["confidence_intervals"]["accuracy"]
    assert f"| Accuracy | {models[0].metrics['accuracy']:.4f} | " \
           f"{interval['low']:.4f}\u2013{interval['high']:.4f} |" in card
    assert dataset.sha256 in card and models[0].sha256 in card
    assert "28\u00d728" in card
    assert "Research use only, not for diagnosis" in card
    assert "## Calibration" in card and "Expected calibration error" in card
    assert "compact_cnn" in card and "`width=4`" in card


# --- export --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_export_endpoint_returns_a_verified_bundle_with_the_model_card(models, owner):
    client = api(owner)
    response = client.get(f"/api/v1/models/{models[0].pk}/export/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert 'filename="a-v1.zip"' in response["Content-Disposition"]
    payload = b"".join(response.streaming_content)
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        names = set(archive.namelist())
        card = archive.read("MODEL_CARD.md").decode()
        images = np.load(io.BytesIO(archive.read("test_inputs/images.npy")))
        labels = np.load(io.BytesIO(archive.read("test_inputs/labels.npy")))
    assert {"model.keras", "model.tflite", "saved_model/saved_model.pb"} <= names
    assert card == client.get(f"/api/v1/models/{models[0].pk}/card/").content.decode()
    assert images.shape == (8, 28, 28, 3) and images.dtype == np.uint8
    assert sorted(set(labels.tolist())) == [0, 1, 2]  # every class among the test inputs

    again = b"".join(client.get(f"/api/v1/models/{models[0].pk}/export/").streaming_content)
    assert again == payload  # built once, then served from the cache


@pytest.mark.slow
def test_a_public_model_of_a_private_dataset_is_exported_without_the_datasets_images(
        models, dataset):
    ModelVersion.objects.filter(pk=models[0].pk).update(visibility=Visibility.PUBLIC)
    stranger = api(UserFactory(username="sam"))
    assert stranger.get(f"/api/v1/datasets/{dataset.pk}/").status_code == 404
    response = stranger.get(f"/api/v1/models/{models[0].pk}/export/")
    assert response.status_code == 200
    with zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))) as archive:
        names = set(archive.namelist())
        images = np.load(io.BytesIO(archive.read("test_inputs/images.npy")))
        preprocessing = archive.read("preprocessing.json").decode()
    assert "test_inputs/labels.npy" not in names
    assert images.shape == (8, 28, 28, 3)
    held = selectors.dataset_arrays(dataset=dataset)
    every_image = np.concatenate([held.images(split) for split in held.splits])
    assert not any((every_image == image).all(axis=(1, 2, 3)).any() for image in images)
    assert "seeded noise images" in preprocessing and dataset.name not in preprocessing


@pytest.mark.slow
def test_an_export_that_disagrees_with_keras_answers_422_with_the_discrepancy(
        models, owner, monkeypatch):
    monkeypatch.setattr(export, "onnx_available", lambda: False)
    monkeypatch.setattr(export, "run_tflite", lambda tflite, images: np.zeros((len(images), 3)))
    response = api(owner).get(f"/api/v1/models/{models[0].pk}/export/")
    assert response.status_code == 422
    assert "TFLite output differs from Keras by up to" in response.json()["detail"]


# --- training registers the full report ------------------------------------------------------------


@pytest.mark.slow
def test_a_finished_training_job_registers_its_model_with_the_full_report_and_test_predictions(
        owner, django_capture_on_commit_callbacks):
    from tests.training.conftest import TINY_COUNTS, smoke
    from training import services as training_services

    tiny = DatasetFactory(owner=owner, class_counts=TINY_COUNTS)
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = training_services.training_job_create(owner=owner, dataset=tiny, preset="smoke",
                                                       config=smoke())
    job.refresh_from_db()
    assert job.status == "succeeded", job.error
    model = job.model_version
    assert {"calibration", "roc", "confidence_intervals"} <= set(model.metrics)
    evaluation = ModelEvaluation.objects.get(model_version=model, split="test")
    assert evaluation.n == sum(TINY_COUNTS["test"])
    assert model.metrics["accuracy"] == pytest.approx(
        np.mean(np.array(evaluation.predicted) == selectors.dataset_arrays(dataset=tiny).labels("test")))


# --- deleting ------------------------------------------------------------------------------------


def test_an_owner_deletes_their_model_with_its_file_and_others_cannot(
        models, owner, staff, media_root, django_capture_on_commit_callbacks):
    artifact = Path(media_root, models[0].artifact.name)
    assert artifact.is_file()
    ModelVersion.objects.filter(pk=models[0].pk).update(visibility=Visibility.PUBLIC)
    reader = api(UserFactory(username="rudy"))
    assert reader.delete(f"/api/v1/models/{models[0].pk}/").status_code == 403
    services_registry.model_alias_promote(model_version=models[0], user=staff, reason="ship")
    response = api(owner).delete(f"/api/v1/models/{models[0].pk}/")
    assert response.status_code == 409 and "'production'" in response.json()["detail"]

    with django_capture_on_commit_callbacks(execute=True):
        assert api(owner).delete(f"/api/v1/models/{models[1].pk}/").status_code == 204
        page = Client()
        page.force_login(owner)
        response = page.post(f"/models/{models[2].pk}/delete/")
    assert response.status_code == 302 and response["Location"] == "/models/"
    assert list(ModelVersion.objects.values_list("pk", flat=True)) == [models[0].pk]
    assert artifact.is_file()
    assert not any(Path(media_root, m.artifact.name).is_file() for m in models[1:])

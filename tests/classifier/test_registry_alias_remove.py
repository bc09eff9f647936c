"""Removing a dataset's alias: staff only, audited, and its users served the default again.

A removal deletes the alias and leaves an audit entry naming the model it pointed at; the
alias's earlier entries stay. A removed alias is not rolled back (the refusal says when it was
removed and how to set it again), and a later promotion starts it anew.
"""

from __future__ import annotations

import io

import pytest
from django.test import Client
from PIL import Image
from rest_framework.test import APIClient

from classifier import selectors, services_registry
from classifier.models import ModelAlias, ModelAliasChange, ModelVersion, Visibility
from classifier.selectors import default_model_for
from tests.classifier.test_registry import register_model, saved_model_file
from tests.factories import DatasetFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_evaluation(settings, tmp_path):
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    settings.WORK_DIR = tmp_path / "work"


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
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
def models(dataset, owner, model_files):
    """Three models of the dataset: a (validation accuracy 0.6), b (0.9, the best), c (0.7)."""
    return [register_model(dataset, owner, saved_model_file(model_files, seed=seed), name=name,
                           val_accuracy=accuracy)
            for seed, (name, accuracy) in enumerate([("a", 0.6), ("b", 0.9), ("c", 0.7)])]


def api(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def remove_url(dataset, alias="production") -> str:
    return f"/api/v1/datasets/{dataset.pk}/aliases/{alias}/remove/"


def trail(dataset) -> list[tuple]:
    """(alias, action, from, to, user, reason) of every audit entry, oldest first."""
    return [(c.alias_name, c.action, c.from_version and c.from_version.name,
             c.to_version and c.to_version.name, c.user and c.user.username, c.reason)
            for c in ModelAliasChange.objects.filter(dataset=dataset).order_by("created_at", "pk")]


def state(dataset) -> tuple:
    """Everything a refused removal must leave as it was."""
    return (sorted(ModelAlias.objects.filter(dataset=dataset)
                   .values_list("name", "model_version_id")), trail(dataset))


def promote(model, staff, alias="production", reason="release"):
    return services_registry.model_alias_promote(model_version=model, alias=alias, user=staff,
                                                 reason=reason)


def png() -> io.BytesIO:
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (180, 90, 140)).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = "cell.png"
    return buffer


# --- the API -----------------------------------------------------------------------------------


def test_staff_remove_an_alias_through_the_api_with_an_audit_entry(models, dataset, staff):
    a, b, c = models
    promote(a, staff, reason="first release")
    promote(b, staff, reason="better val acc")
    promote(c, staff, alias="canary", reason="try c")

    response = api(staff).post(remove_url(dataset), {"reason": "back to the default"},
                               format="json")

    assert response.status_code == 200, response.content
    entry = response.json()
    assert (entry["alias"], entry["action"], entry["from_version"], entry["to_version"],
            entry["user"], entry["reason"]) == (
        "production", "remove", {"id": b.pk, "name": "b v1"}, None, "stella",
        "back to the default")
    assert entry["created_at"]
    # The alias is gone, the other alias stays, and the audit trail keeps every entry.
    assert list(ModelAlias.objects.values_list("name", "model_version_id")) == [("canary", c.pk)]
    assert trail(dataset) == [
        ("production", "promote", None, "a", "stella", "first release"),
        ("production", "promote", "a", "b", "stella", "better val acc"),
        ("canary", "promote", None, "c", "stella", "try c"),
        ("production", "remove", "b", None, "stella", "back to the default"),
    ]
    removal = ModelAliasChange.objects.get(action="remove")
    assert removal.alias is None and str(removal) == "production: b v1 → None (remove)"

    listing = api(staff).get(f"/api/v1/datasets/{dataset.pk}/aliases/").json()
    assert [(x["name"], x["model"]) for x in listing["aliases"]] == [("canary", c.pk)]
    assert [(x["alias"], x["action"], x["from_version"]["id"]) for x in listing["removed"]] == [
        ("production", "remove", b.pk)]
    assert [(x["alias"], x["action"]) for x in listing["changes"]] == [
        ("production", "remove"), ("canary", "promote"), ("production", "promote"),
        ("production", "promote")]
    assert listing["changes"][0]["to_version"] is None


def test_after_a_removal_users_are_served_the_default_model_again(
        models, dataset, owner, staff, isolated_model_cache):
    a, b, _ = models
    promote(a, staff, reason="audited")
    client = api(owner)

    def served() -> int:
        response = client.post("/api/v1/predictions/",
                               {"images": [png()], "dataset": dataset.pk, "gradcam": "false"},
                               format="multipart")
        assert response.status_code == 201, response.content
        return response.json()[0]["model"]["id"]

    assert default_model_for(dataset=dataset, user=owner) == a
    assert served() == a.pk  # the serving cache now holds a's row
    assert selectors.serving_models.timeout > 0

    assert api(staff).post(remove_url(dataset), {"reason": "use the best"},
                           format="json").status_code == 200

    # The very next request gets the best by validation accuracy, b.
    assert default_model_for(dataset=dataset, user=owner) == b
    assert served() == b.pk


def test_removing_an_alias_that_does_not_exist_is_a_404_and_changes_nothing(
        models, dataset, staff):
    promote(models[2], staff, alias="canary")
    before = state(dataset)

    response = api(staff).post(remove_url(dataset), {"reason": "tidy"}, format="json")
    assert response.status_code == 404
    assert response.json()["detail"] == "Tiny blood has no alias 'production'"
    assert state(dataset) == before

    # Removed once: a second removal is refused, saying when, by whom and from which model.
    promote(models[0], staff)
    assert api(staff).post(remove_url(dataset), {"reason": "first"},
                           format="json").status_code == 200
    before = state(dataset)
    response = api(staff).post(remove_url(dataset), {"reason": "again"}, format="json")
    assert response.status_code == 404
    detail = response.json()["detail"]
    assert detail.startswith("Tiny blood has no alias 'production': it was removed from a v1 on ")
    assert detail.endswith("by stella; promote a model to set it again")
    assert state(dataset) == before
    with pytest.raises(services_registry.AliasNotFoundError):
        services_registry.model_alias_remove(dataset=dataset, alias="production", user=staff,
                                             reason="again")
    assert state(dataset) == before


def test_a_removal_needs_a_reason(models, dataset, staff):
    promote(models[0], staff)
    before = state(dataset)
    assert api(staff).post(remove_url(dataset), {}, format="json").status_code == 400
    assert api(staff).post(remove_url(dataset), {"reason": "   "}, format="json").status_code == 400
    with pytest.raises(services_registry.AliasError, match="give a reason"):
        services_registry.model_alias_remove(dataset=dataset, alias="production", user=staff,
                                             reason=" ")
    assert state(dataset) == before


def test_only_staff_remove_an_alias_even_of_their_own_dataset_and_model(
        models, dataset, owner, staff):
    promote(models[0], staff)
    before = state(dataset)

    response = api(owner).post(remove_url(dataset), {"reason": "mine"}, format="json")
    assert response.status_code == 403
    assert response.json()["detail"] == "only staff can change a dataset's model aliases"
    page = Client()
    page.force_login(owner)
    assert page.post(f"/datasets/{dataset.pk}/aliases/production/remove/",
                     {"reason": "mine", "model": models[0].pk}).status_code == 403
    with pytest.raises(services_registry.RegistryPermissionError):
        services_registry.model_alias_remove(dataset=dataset, alias="production", user=owner,
                                             reason="mine")
    # A user who cannot see the dataset is told it does not exist.
    stranger = api(UserFactory(username="sid"))
    assert stranger.post(remove_url(dataset), {"reason": "x"}, format="json").status_code == 404
    assert api(None).post(remove_url(dataset), {"reason": "x"}, format="json").status_code == 401
    assert state(dataset) == before


# --- rolling back and promoting after a removal --------------------------------------------------


def test_a_removed_alias_is_not_rolled_back_and_a_new_promotion_starts_it_anew(
        models, dataset, staff):
    a, b, c = models
    promote(a, staff)
    promote(b, staff)
    services_registry.model_alias_remove(dataset=dataset, alias="production", user=staff,
                                         reason="withdrawn")
    before = state(dataset)

    response = api(staff).post(f"/api/v1/datasets/{dataset.pk}/aliases/production/rollback/",
                               {"reason": "undo"}, format="json")
    assert response.status_code == 409
    assert "it was removed from b v1" in response.json()["detail"]
    assert "promote a model to set it again" in response.json()["detail"]
    assert state(dataset) == before

    # Set again: the removal is the alias's floor, earlier models are not rolled back to.
    promote(c, staff, reason="fresh start")
    with pytest.raises(services_registry.AliasError, match="no earlier model"):
        services_registry.model_alias_rollback(dataset=dataset, alias="production", user=staff,
                                               reason="undo")
    promote(a, staff, reason="again a")
    alias = services_registry.model_alias_rollback(dataset=dataset, alias="production",
                                                   user=staff, reason="a regressed")
    assert alias.model_version == c
    assert [e[1] for e in trail(dataset)] == [
        "promote", "promote", "remove", "promote", "promote", "rollback"]
    # The earlier entries keep the alias's name; the new alias's entries link to it.
    assert ModelAliasChange.objects.filter(alias=alias).count() == 3
    assert ModelAliasChange.objects.filter(alias=None, alias_name="production").count() == 3


def test_after_its_alias_is_removed_a_model_can_be_deleted(
        models, dataset, owner, staff, django_capture_on_commit_callbacks):
    a = models[0]
    promote(a, staff)
    response = api(owner).delete(f"/api/v1/models/{a.pk}/")
    assert response.status_code == 409
    assert "remove it first" in response.json()["detail"]

    api(staff).post(remove_url(dataset), {"reason": "retire a"}, format="json")
    with django_capture_on_commit_callbacks(execute=True):
        assert api(owner).delete(f"/api/v1/models/{a.pk}/").status_code == 204
    assert not ModelVersion.objects.filter(pk=a.pk).exists()

    # The audit trail outlives the model: the removal still says what happened.
    listing = api(staff).get(f"/api/v1/datasets/{dataset.pk}/aliases/").json()
    assert [(x["alias"], x["action"], x["from_version"], x["user"], x["reason"])
            for x in listing["removed"]] == [("production", "remove", None, "stella", "retire a")]
    page = Client()
    page.force_login(staff)
    html = page.get(f"/models/{models[1].pk}/").content.decode()
    assert "Remove: (deleted) → no model" in html
    assert "it named a deleted model" in html


def test_a_public_datasets_removed_alias_does_not_name_a_private_model_to_others(
        model_files, owner, staff):
    shared = DatasetFactory(builtin=True, name="Built-in blood")
    model = register_model(shared, owner, saved_model_file(model_files, seed=1),
                           name="olives-secret-study", visibility=Visibility.PUBLIC)
    promote(model, staff)
    services_registry.model_alias_remove(dataset=shared, alias="production", user=staff,
                                         reason="withdrawn")
    ModelVersion.objects.filter(pk=model.pk).update(visibility=Visibility.PRIVATE)  # later
    reader = UserFactory(username="rae")

    listing = api(reader).get(f"/api/v1/datasets/{shared.pk}/aliases/").json()
    assert listing["removed"][0]["from_version"] == {"id": None, "name": "a private model"}
    assert "olives-secret-study" not in str(listing)
    assert api(reader).post(remove_url(shared), {"reason": "x"}, format="json").status_code == 403


# --- the model page --------------------------------------------------------------------------------


def test_staff_remove_an_alias_from_the_model_page_with_a_confirmation(models, dataset, staff,
                                                                      owner):
    a, b, _ = models
    promote(a, staff)
    promote(b, staff, alias="canary")
    client = Client()
    client.force_login(staff)

    page = client.get(f"/models/{a.pk}/").content.decode()
    form = f'action="/datasets/{dataset.pk}/aliases/production/remove/"'
    assert form in page
    assert ('data-confirm="Remove the alias production of Tiny blood? Its users will be served '
            'the model with the best validation accuracy instead.') in page
    assert "js/confirm.js" in page
    assert 'aria-label="reason for removing canary"' in page

    response = client.post(f"/datasets/{dataset.pk}/aliases/production/remove/",
                           {"reason": "a misreads platelets", "model": a.pk}, follow=True)
    assert response.redirect_chain[-1][0] == f"/models/{a.pk}/"
    html = response.content.decode()
    assert ("Removed production of Tiny blood (it named a v1); its users are served the model "
            "with the best validation accuracy again.") in html
    assert form not in html  # no alias left to remove
    assert '<tr class="alias-removed"><td><span class="badge">production</span></td>' in html
    assert "by stella; it named" in html
    assert "Remove: a v1 → no model" in html and "a misreads platelets" in html
    assert ModelAlias.objects.get().name == "canary"

    # Removing it again from a stale page says why, and changes nothing.
    before = state(dataset)
    response = client.post(f"/datasets/{dataset.pk}/aliases/production/remove/",
                           {"reason": "again", "model": a.pk}, follow=True)
    assert "it was removed from a v1" in response.content.decode()
    assert state(dataset) == before

    # Users who are not staff see no removal form.
    other = Client()
    other.force_login(owner)
    assert "/remove/" not in other.get(f"/models/{a.pk}/").content.decode()


def test_the_removal_is_documented_in_the_api_schema(staff):
    schema = api(staff).get("/api/v1/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/datasets/{id}/aliases/{alias}/remove/"]["post"]
    assert {"200", "400", "401", "403", "404"} <= set(operation["responses"])
    assert "no such alias" in operation["responses"]["404"]["description"]
    assert "requestBody" in operation


# --- the migration -------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_the_alias_name_of_every_existing_audit_entry(models, staff):
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    before, after = ("classifier", "0003_registry_evaluations_aliases"), (
        "classifier", "0004_alias_removal")
    executor = MigrationExecutor(connection)
    executor.migrate([before])
    old = executor.loader.project_state([before]).apps
    alias = old.get_model("classifier", "ModelAlias").objects.create(
        dataset_id=models[0].dataset_id, name="canary", model_version_id=models[0].pk)
    old.get_model("classifier", "ModelAliasChange").objects.create(
        alias=alias, dataset_id=models[0].dataset_id, action="promote",
        to_version_id=models[0].pk, user_id=staff.pk, reason="before removal existed")

    executor = MigrationExecutor(connection)
    executor.migrate([after])
    # Whatever else was unapplied to get back to 0003 is applied again, for the tests after.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    change = ModelAliasChange.objects.get()
    assert (change.alias_name, change.alias.name, change.reason) == (
        "canary", "canary", "before removal existed")
    services_registry.model_alias_remove(dataset=change.dataset, alias="canary", user=staff,
                                         reason="tidy")
    assert trail(change.dataset) == [
        ("canary", "promote", None, "a", "stella", "before removal existed"),
        ("canary", "remove", "a", None, "stella", "tidy")]

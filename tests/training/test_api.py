"""The training REST API: /api/v1/training-jobs/, /api/v1/architectures/, /api/v1/presets/."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from classifier.models import ModelVersion
from medml.config import PRESETS
from tests.factories import DatasetFactory, UserFactory
from tests.training.conftest import smoke
from training.models import TrainingJob

Status = TrainingJob.Status
JOBS = "/api/v1/training-jobs/"


@pytest.fixture
def api(owner) -> APIClient:
    client = APIClient()
    client.force_authenticate(owner)
    return client


@pytest.fixture
def other_user(db):
    return UserFactory(username="piet")


def launch(api, django_capture_on_commit_callbacks, *, execute=False, headers=None, **payload):
    with django_capture_on_commit_callbacks(execute=execute):
        return api.post(JOBS, payload, format="json", headers=headers or {})


def job_of(user, dataset=None) -> TrainingJob:
    dataset = dataset or DatasetFactory(owner=user)
    return TrainingJob.objects.create(owner=user, dataset=dataset, config={"epochs": 2},
                                      preset="smoke", total_epochs=2)


@pytest.mark.parametrize("method, path", [
    ("get", JOBS), ("post", JOBS), ("get", "/api/v1/architectures/"),
    ("get", "/api/v1/presets/"),
])
def test_anonymous_requests_are_refused_with_401(db, method, path):
    response = getattr(APIClient(), method)(path)
    assert response.status_code == 401
    assert "WWW-Authenticate" in response.headers


def test_a_bad_config_is_refused_with_errors_naming_the_fields(api, dataset,
                                                             django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      preset="smoke", config={"batch_size": 0, "optimizer": "rmsprop",
                                              "augmentation": {"zoom_range": 3}})
    assert response.status_code == 400
    errors = response.json()["config"]
    assert set(errors) == {"batch_size", "optimizer", "augmentation.zoom_range"}
    assert "rmsprop" in errors["optimizer"][0]
    assert not TrainingJob.objects.exists()


def test_a_config_that_is_not_an_object_is_refused(api, dataset,
                                                   django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      config=[1, 2])
    assert response.status_code == 400
    assert "config" in response.json()
    assert not TrainingJob.objects.exists()


def test_an_unknown_preset_is_refused(api, dataset, django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      preset="turbo")
    assert response.status_code == 400
    assert "turbo" in response.json()["preset"][0]
    assert not TrainingJob.objects.exists()


def test_another_users_private_dataset_is_refused(api, other_user,
                                                  django_capture_on_commit_callbacks):
    theirs = DatasetFactory(owner=other_user)
    response = launch(api, django_capture_on_commit_callbacks, dataset=theirs.pk, preset="smoke")
    assert response.status_code == 400
    assert "dataset" in response.json()
    assert not TrainingJob.objects.exists()


def test_a_good_request_queues_a_job_and_returns_it(api, owner, dataset,
                                                    django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      preset="smoke", config={"epochs": 3}, name="first try")
    assert response.status_code == 201, response.json()
    body = response.json()
    job = TrainingJob.objects.get()
    assert body["id"] == job.pk
    assert body["status"] == "queued" and body["owner"] == owner.username
    assert body["name"] == "first try"
    assert body["config"]["epochs"] == 3 and body["total_epochs"] == 3
    assert body["config"]["architecture"] == "compact_cnn"
    assert body["dataset_name"] == dataset.name
    assert job.owner == owner and job.dataset == dataset


@pytest.mark.slow
def test_a_launched_job_trains_once_the_request_commits(api, dataset,
                                                        django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks, execute=True,
                      dataset=dataset.pk, preset="smoke", config=smoke(epochs=1))
    assert response.status_code == 201
    detail = api.get(f"{JOBS}{response.json()['id']}/").json()
    assert detail["status"] == "succeeded", detail["error"]
    assert detail["progress"] == 1.0
    assert len(detail["history"]) == 1
    assert detail["model_version"] == ModelVersion.objects.get().pk


def test_an_idempotency_key_makes_a_repeated_request_return_the_same_job(
        api, dataset, django_capture_on_commit_callbacks):
    headers = {"Idempotency-Key": "launch-42"}
    first = launch(api, django_capture_on_commit_callbacks, headers=headers,
                   dataset=dataset.pk, preset="smoke")
    second = launch(api, django_capture_on_commit_callbacks, headers=headers,
                    dataset=dataset.pk, preset="smoke")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json()["id"] == second.json()["id"]
    assert TrainingJob.objects.count() == 1


def test_an_overlong_idempotency_key_is_refused(api, dataset, django_capture_on_commit_callbacks):
    response = launch(api, django_capture_on_commit_callbacks,
                      headers={"Idempotency-Key": "k" * 101}, dataset=dataset.pk, preset="smoke")
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()
    assert not TrainingJob.objects.exists()


def test_the_list_shows_only_the_users_own_jobs(api, owner, other_user):
    mine = job_of(owner)
    job_of(other_user)
    body = api.get(JOBS).json()
    assert [job["id"] for job in body["results"]] == [mine.pk]


def test_staff_see_every_job(owner, other_user):
    jobs = {job_of(owner).pk, job_of(other_user).pk}
    client = APIClient()
    client.force_authenticate(UserFactory(username="admin", staff=True))
    assert {job["id"] for job in client.get(JOBS).json()["results"]} == jobs


def test_the_list_filters_by_status(api, owner):
    queued, failed = job_of(owner), job_of(owner)
    TrainingJob.objects.filter(pk=failed.pk).update(status=Status.FAILED)
    assert [job["id"] for job in api.get(JOBS, {"status": "failed"}).json()["results"]] == \
        [failed.pk]
    assert [job["id"] for job in api.get(JOBS, {"status": "queued"}).json()["results"]] == \
        [queued.pk]


@pytest.mark.parametrize("wanted", ["bogus", "FAILED", "done"])
def test_an_unknown_status_filter_is_refused_naming_the_states(api, owner, wanted):
    job_of(owner)
    response = api.get(JOBS, {"status": wanted})
    # Not an empty list, as if no job were in that state.
    assert response.status_code == 400
    message = response.json()["status"][0]
    assert all(state in message for state in Status.values)


def test_the_status_filter_applies_to_the_list_only(api, owner):
    job = job_of(owner)
    assert api.get(f"{JOBS}{job.pk}/", {"status": "failed"}).json()["id"] == job.pk


@pytest.mark.parametrize("method, suffix", [("get", ""), ("post", "cancel/"),
                                            ("post", "retry/")])
def test_another_users_job_is_not_found(api, other_user, method, suffix):
    theirs = job_of(other_user)
    TrainingJob.objects.filter(pk=theirs.pk).update(status=Status.FAILED)
    response = getattr(api, method)(f"{JOBS}{theirs.pk}/{suffix}")
    assert response.status_code == 404
    assert TrainingJob.objects.count() == 1
    theirs.refresh_from_db()
    assert theirs.status == Status.FAILED and not theirs.cancel_requested


def test_cancelling_a_queued_job_returns_it_cancelled(api, owner):
    job = job_of(owner)
    response = api.post(f"{JOBS}{job.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    job.refresh_from_db()
    assert job.status == Status.CANCELLED


def test_cancelling_a_running_job_returns_it_with_the_request_noted(api, owner):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    response = api.post(f"{JOBS}{job.pk}/cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "running"
    assert response.json()["cancel_requested"] is True


def test_cancelling_a_finished_job_is_a_conflict(api, owner):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.SUCCEEDED)
    response = api.post(f"{JOBS}{job.pk}/cancel/")
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]


def test_retrying_a_failed_job_creates_the_next_attempt(api, owner,
                                                        django_capture_on_commit_callbacks):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        response = api.post(f"{JOBS}{job.pk}/retry/")
    assert response.status_code == 201
    body = response.json()
    assert body["id"] != job.pk
    assert body["attempt"] == 2 and body["retry_of"] == job.pk and body["status"] == "queued"


def test_a_job_is_retried_once_and_then_points_to_its_retry(api, owner,
                                                            django_capture_on_commit_callbacks):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = api.post(f"{JOBS}{job.pk}/retry/")
        second = api.post(f"{JOBS}{job.pk}/retry/")  # a double click
    assert first.status_code == 201 and len(callbacks) == 1
    retry_id = first.json()["id"]
    assert second.status_code == 409
    assert f"already retried as job #{retry_id}" in second.json()["detail"]
    assert TrainingJob.objects.count() == 2
    assert api.get(f"{JOBS}{job.pk}/").json()["retried_as"] == retry_id
    listed = {row["id"]: row["retried_as"] for row in api.get(JOBS).json()["results"]}
    assert listed == {job.pk: retry_id, retry_id: None}


def test_a_config_the_dataset_cannot_train_is_refused_before_queueing(
        api, owner, django_capture_on_commit_callbacks):
    # No validation image of the third class: validation AUC cannot be computed.
    dataset = DatasetFactory(owner=owner, class_counts={"train": [5, 5, 5], "val": [3, 3, 0],
                                                        "test": [2, 2, 2]})
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      preset="strong_breast")
    assert response.status_code == 400
    assert "no validation image of" in response.json()["config"]["monitor"][0]
    response = launch(api, django_capture_on_commit_callbacks, dataset=dataset.pk,
                      preset="smoke", config={"seed": 2**31 - 1, "ensemble_size": 2})
    assert response.status_code == 400
    assert "must be at most 2147483646" in response.json()["config"]["seed"][0]
    assert not TrainingJob.objects.exists()


def test_retrying_a_running_job_is_a_conflict(api, owner):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    response = api.post(f"{JOBS}{job.pk}/retry/")
    assert response.status_code == 409
    assert TrainingJob.objects.count() == 1


def test_the_architectures_endpoint_lists_all_eight(api):
    response = api.get("/api/v1/architectures/")
    assert response.status_code == 200
    names = [entry["name"] for entry in response.json()]
    assert names == ["resnet50", "vgg16", "blood_cnn_95", "blood_cnn_85", "breast_cnn",
                     "resnet18_28", "compact_cnn", "compact_cnn_wide"]
    assert all(entry["title"] and entry["description"] for entry in response.json())


def test_the_presets_endpoint_lists_the_report_recipes_with_their_accuracy(api):
    response = api.get("/api/v1/presets/")
    assert response.status_code == 200
    presets = {entry["name"]: entry for entry in response.json()}
    assert set(presets) == set(PRESETS)
    report = {name: entry["report_accuracy"] for name, entry in presets.items()
              if name.startswith("report_")}
    assert report == {
        "report_resnet50_blood": 0.15, "report_vgg16_breast": 0.71,
        "report_blood_cnn_95": 0.95, "report_blood_cnn_85": 0.85,
        "report_breast_cnn_83": 0.83, "report_breast_cnn_77": 0.77,
    }
    assert presets["smoke"]["config"]["epochs"] == 2


# --- deleting ------------------------------------------------------------------------------------


def with_checkpoints(job: TrainingJob):
    from training.services import job_workdir

    workdir = job_workdir(job.pk)
    workdir.mkdir(parents=True)
    (workdir / "last.keras").write_bytes(b"checkpoint")
    return workdir


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED, Status.SUCCEEDED])
def test_deleting_a_finished_job_removes_it_and_its_checkpoints(
        api, owner, status, django_capture_on_commit_callbacks):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=status)
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"{JOBS}{job.pk}/")
    assert response.status_code == 204
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert not workdir.exists()
    assert api.get(f"{JOBS}{job.pk}/").status_code == 404


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_deleting_an_active_job_is_a_conflict_that_changes_nothing(
        api, owner, status, django_capture_on_commit_callbacks):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=status)
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"{JOBS}{job.pk}/")
    assert response.status_code == 409
    assert f"job #{job.pk} is {status}" in response.json()["detail"]
    assert "cancel it first" in response.json()["detail"]
    job.refresh_from_db()
    assert job.status == status and not job.cancel_requested
    assert workdir.exists()


def test_another_users_job_cannot_be_deleted(api, other_user, django_capture_on_commit_callbacks):
    theirs = job_of(other_user)
    TrainingJob.objects.filter(pk=theirs.pk).update(status=Status.FAILED)
    workdir = with_checkpoints(theirs)
    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"{JOBS}{theirs.pk}/")
    assert response.status_code == 404
    assert TrainingJob.objects.filter(pk=theirs.pk, status=Status.FAILED).exists()
    assert workdir.exists()


def test_staff_may_delete_another_users_finished_job(other_user,
                                                     django_capture_on_commit_callbacks):
    theirs = job_of(other_user)
    TrainingJob.objects.filter(pk=theirs.pk).update(status=Status.CANCELLED)
    staff = APIClient()
    staff.force_authenticate(UserFactory(username="root", staff=True))
    with django_capture_on_commit_callbacks(execute=True):
        assert staff.delete(f"{JOBS}{theirs.pk}/").status_code == 204
    assert not TrainingJob.objects.exists()


def test_anonymous_deletes_are_refused_with_401(owner):
    job = job_of(owner)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.FAILED)
    assert APIClient().delete(f"{JOBS}{job.pk}/").status_code == 401
    assert TrainingJob.objects.filter(pk=job.pk).exists()


def test_a_deleted_jobs_model_stays_and_its_api_works(api, owner,
                                                      django_capture_on_commit_callbacks):
    from tests.factories import ModelVersionFactory

    dataset = DatasetFactory(owner=owner)
    model = ModelVersionFactory(dataset=dataset, owner=owner, name="kept-model")
    job = TrainingJob.objects.create(owner=owner, dataset=dataset, config={"epochs": 1},
                                     total_epochs=1, status=Status.SUCCEEDED, model_version=model)
    assert api.get(f"{JOBS}{job.pk}/").json()["model_version"] == model.pk
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{JOBS}{job.pk}/").status_code == 204
    assert ModelVersion.objects.filter(pk=model.pk).exists()
    detail = api.get(f"/api/v1/models/{model.pk}/")
    assert detail.status_code == 200 and detail.json()["name"] == "kept-model"
    assert model.pk in [row["id"] for row in api.get("/api/v1/models/").json()["results"]]
    assert api.get(f"/api/v1/models/{model.pk}/card/").status_code == 200


def test_a_retry_and_the_job_it_retried_survive_each_others_deletion(
        api, owner, django_capture_on_commit_callbacks):
    first = job_of(owner)
    TrainingJob.objects.filter(pk=first.pk).update(status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        retry_id = api.post(f"{JOBS}{first.pk}/retry/").json()["id"]
    TrainingJob.objects.filter(pk=retry_id).update(status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{JOBS}{retry_id}/").status_code == 204
    body = api.get(f"{JOBS}{first.pk}/").json()
    assert body["retried_as"] is None and body["status"] == "failed"
    with django_capture_on_commit_callbacks(execute=False):
        again = api.post(f"{JOBS}{first.pk}/retry/")
    assert again.status_code == 201 and again.json()["attempt"] == 2
    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"{JOBS}{first.pk}/").status_code == 204
    body = api.get(f"{JOBS}{again.json()['id']}/").json()
    assert body["retry_of"] is None and body["attempt"] == 2


def test_the_schema_documents_deleting_a_job(api):
    schema = api.get("/api/v1/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/training-jobs/{id}/"]["delete"]
    assert {"204", "409"} <= set(operation["responses"])

"""Deleting a training job (the service): finished jobs only, with their checkpoints; models stay."""

from __future__ import annotations

import pytest
from django.utils import timezone

from classifier import services as catalog_services
from classifier.models import Dataset, ModelVersion
from tests.factories import ModelVersionFactory, UserFactory
from training import selectors, services
from training.models import TrainingJob

Status = TrainingJob.Status


def job_of(owner, dataset, **fields) -> TrainingJob:
    return TrainingJob.objects.create(owner=owner, dataset=dataset, config={"epochs": 2},
                                      preset="smoke", total_epochs=2, **fields)


def with_checkpoints(job: TrainingJob):
    workdir = services.job_workdir(job.pk)
    workdir.mkdir(parents=True)
    (workdir / "last.keras").write_bytes(b"checkpoint")
    return workdir


@pytest.mark.parametrize("status", [Status.FAILED, Status.CANCELLED, Status.SUCCEEDED])
def test_a_finished_job_is_deleted_and_its_workdir_removed_once_committed(
        owner, dataset, status, django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=status, finished_at=timezone.now())
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.training_job_delete(job=job)
    assert not TrainingJob.objects.filter(pk=job.pk).exists()
    assert workdir.exists()  # nothing is removed before the deletion is committed
    for callback in callbacks:
        callback()
    assert not workdir.exists()


def test_a_finished_job_without_a_workdir_is_deleted(owner, dataset,
                                                     django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=job)
    assert not TrainingJob.objects.exists()


@pytest.mark.parametrize("status", [Status.QUEUED, Status.RUNNING])
def test_an_active_job_is_not_deleted_and_nothing_changes(owner, dataset, status,
                                                          django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=status)
    workdir = with_checkpoints(job)
    with django_capture_on_commit_callbacks(execute=True) as callbacks, \
            pytest.raises(services.JobStateError, match="cancel it first"):
        services.training_job_delete(job=job)
    assert not callbacks
    job.refresh_from_db()
    assert job.status == status and not job.cancel_requested
    assert workdir.exists()


def test_a_job_already_being_cancelled_is_not_deleted_until_it_stops(owner, dataset):
    job = job_of(owner, dataset, status=Status.RUNNING, cancel_requested=True)
    with pytest.raises(services.JobStateError, match="once it has stopped"):
        services.training_job_delete(job=job)
    assert TrainingJob.objects.filter(pk=job.pk, status=Status.RUNNING).exists()


def test_the_state_is_read_again_when_deleting(owner, dataset):
    """The state is read under a lock, not taken from the caller's (possibly stale) copy."""
    job = job_of(owner, dataset, status=Status.FAILED)
    TrainingJob.objects.filter(pk=job.pk).update(status=Status.RUNNING)
    with pytest.raises(services.JobStateError):
        services.training_job_delete(job=job)
    assert TrainingJob.objects.filter(pk=job.pk).exists()


def test_a_succeeded_jobs_model_stays_in_the_registry(owner, dataset,
                                                      django_capture_on_commit_callbacks):
    model = ModelVersionFactory(dataset=dataset, owner=owner)
    job = job_of(owner, dataset, status=Status.SUCCEEDED, model_version=model)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=job)
    model.refresh_from_db()
    assert ModelVersion.objects.filter(pk=model.pk).exists()
    assert not hasattr(model, "training_job")


def test_deleting_a_retried_job_keeps_its_retry(owner, dataset,
                                                django_capture_on_commit_callbacks):
    first = job_of(owner, dataset, status=Status.FAILED)
    with django_capture_on_commit_callbacks(execute=False):
        retry = services.training_job_retry(job=first)
    TrainingJob.objects.filter(pk=retry.pk).update(status=Status.SUCCEEDED)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=first)
    retry.refresh_from_db()
    assert retry.retry_of_id is None and retry.attempt == 2 and retry.status == Status.SUCCEEDED


def test_deleting_a_retry_lets_the_job_it_retried_be_retried_again(
        owner, dataset, django_capture_on_commit_callbacks):
    first = job_of(owner, dataset, status=Status.CANCELLED)
    with django_capture_on_commit_callbacks(execute=False):
        retry = services.training_job_retry(job=first)
    TrainingJob.objects.filter(pk=retry.pk).update(status=Status.FAILED)
    retry.refresh_from_db()
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=retry)
    shown = selectors.training_job_get_for_user(user=owner, pk=first.pk)
    assert shown.retried_as is None and shown.status == Status.CANCELLED
    with django_capture_on_commit_callbacks(execute=False):
        again = services.training_job_retry(job=shown)
    assert again.retry_of == first and again.attempt == 2


def test_a_job_deleted_meanwhile_is_not_an_error(owner, dataset,
                                                 django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=Status.FAILED)
    stale = TrainingJob.objects.get(pk=job.pk)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=job)
        services.training_job_delete(job=stale)  # a second tab, a double click
    assert not TrainingJob.objects.exists()


def test_a_worker_logging_about_a_deleted_job_does_not_fail(owner, dataset,
                                                            django_capture_on_commit_callbacks):
    # A succeeded job can be deleted while its worker still evaluates its model in full.
    job = job_of(owner, dataset, status=Status.SUCCEEDED)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=job)
    services._log_quietly(job.pk, "full evaluation failed")
    assert not TrainingJob.objects.exists()


def test_after_deleting_its_only_job_the_dataset_can_be_deleted(
        owner, dataset, django_capture_on_commit_callbacks):
    job = job_of(owner, dataset, status=Status.FAILED)
    with pytest.raises(catalog_services.DatasetImportError, match="training jobs"):
        catalog_services.dataset_delete(dataset=dataset)
    with django_capture_on_commit_callbacks(execute=True):
        services.training_job_delete(job=job)
        catalog_services.dataset_delete(dataset=dataset)
    assert not Dataset.objects.filter(pk=dataset.pk).exists()


def test_staff_may_delete_any_users_job_and_others_cannot_find_it(owner, dataset):
    job = job_of(owner, dataset, status=Status.FAILED)
    stranger = UserFactory(username="piet")
    assert not selectors.training_jobs_visible_to(user=stranger).filter(pk=job.pk).exists()
    staff = UserFactory(username="root", staff=True)
    services.training_job_delete(job=selectors.training_job_get_for_user(user=staff, pk=job.pk))
    assert not TrainingJob.objects.exists()

"""Stored files go with their rows, however the rows are deleted (``classifier.signals``)."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction

from classifier.models import ModelEvaluation, Prediction
from tests.factories import DatasetFactory, ModelVersionFactory, UserFactory, png_bytes
from training.models import InferenceJob, TrainingJob
from training.services import job_workdir

pytestmark = pytest.mark.django_db(transaction=True)


def _stored(name: str, data: bytes = b"x") -> str:
    return default_storage.save(name, ContentFile(data))


def _everything_of(user) -> tuple[list[str], object]:
    """A dataset, a model, an evaluation, a prediction, a batch job and a training job of
    ``user``, each with its files in storage; returns the file names and the job's folder.
    The model and the jobs are on a built-in dataset (the user's own dataset could not go
    while a model of it exists)."""
    own = DatasetFactory(owner=user)
    dataset = DatasetFactory(builtin=True)
    model = ModelVersionFactory(dataset=dataset, owner=user, artifact=_stored("models/m.keras"))
    evaluation = ModelEvaluation.objects.create(
        model_version=model, dataset=dataset, dataset_sha256=dataset.sha256, split="test", n=1,
        predicted=[0], probabilities=_stored("evaluations/p.npy"))
    prediction = Prediction.objects.create(
        owner=user, model_version=model, image=_stored("uploads/i.png", png_bytes()),
        image_sha256="0" * 64, predicted_index=0, predicted_label="a", probabilities=[1.0])
    batch = InferenceJob.objects.create(
        owner=user, model_version=model, source=InferenceJob.Source.UPLOAD,
        input_file=_stored("inference/inputs/in.npz"),
        results_csv=_stored("inference/results/r.csv"),
        results_json=_stored("inference/results/r.json"))
    job = TrainingJob.objects.create(owner=user, dataset=dataset, config={},
                                     status=TrainingJob.Status.SUCCEEDED)
    workdir = job_workdir(job.pk)
    workdir.mkdir(parents=True)
    (workdir / "last.keras").write_bytes(b"checkpoint")
    names = [own.data_file.name, model.artifact.name, evaluation.probabilities.name,
             prediction.image.name, batch.input_file.name, batch.results_csv.name,
             batch.results_json.name]
    assert all(default_storage.exists(name) for name in names)
    return names, workdir


def test_deleting_a_user_deletes_the_files_of_everything_that_goes_with_them(settings, tmp_path):
    settings.WORK_DIR = tmp_path / "work"
    user = UserFactory()
    names, workdir = _everything_of(user)

    get_user_model().objects.filter(pk=user.pk).delete()  # as the admin console does

    assert [name for name in names if default_storage.exists(name)] == []
    assert not workdir.exists()


def test_files_stay_when_the_delete_is_rolled_back(settings, tmp_path):
    settings.WORK_DIR = tmp_path / "work"
    user = UserFactory()
    pk = user.pk
    names, workdir = _everything_of(user)

    with pytest.raises(RuntimeError), transaction.atomic():
        user.delete()
        raise RuntimeError("something later in the same transaction failed")

    assert get_user_model().objects.filter(pk=pk).exists()
    assert all(default_storage.exists(name) for name in names)
    assert (workdir / "last.keras").exists()


def test_a_file_another_row_still_names_is_kept():
    dataset = DatasetFactory(owner=UserFactory())
    shared = _stored("models/shared.keras")
    first = ModelVersionFactory(dataset=dataset, artifact=shared)
    ModelVersionFactory(dataset=dataset, artifact=shared)

    first.delete()
    assert default_storage.exists(shared)

"""An ensemble trained as a platform job: one job, one registered model, served with a heatmap."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from rest_framework.test import APIClient

from classifier.models import ModelVersion
from tests.training.conftest import smoke
from training import services
from training.models import TrainingJob

Status = TrainingJob.Status


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.usefixtures("isolated_model_cache")
def test_an_ensemble_job_registers_one_model_that_classifies_with_a_heatmap(
        owner, dataset, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = services.training_job_create(
            owner=owner, dataset=dataset, preset="smoke",
            config=smoke(epochs=1, ensemble_size=2, seed=3))
        assert job.total_epochs == 2  # shown from the start, before a worker takes the job
    job.refresh_from_db()
    assert job.status == Status.SUCCEEDED, job.error
    assert job.total_epochs == 2 and job.current_epoch == 2 and job.progress == 1.0
    assert [(h["epoch"], h["member"]) for h in job.history] == [(1, 1), (2, 2)]
    assert any("ensemble of 2 members" in line for line in job.log)
    assert any("Member 2/2: " in line for line in job.log)

    model = ModelVersion.objects.get()
    assert job.model_version == model and model.config["ensemble_size"] == 2
    assert model.history == job.history
    assert model.metrics["n"] == 12 and model.val_metrics["n"] == 12

    client = APIClient()
    client.force_authenticate(owner)
    buffer = io.BytesIO()
    Image.fromarray(np.full((28, 28, 3), 120, np.uint8)).save(buffer, format="PNG")
    buffer.seek(0)
    buffer.name = "cell.png"
    response = client.post("/api/v1/predictions/", {"images": [buffer], "model": model.pk},
                           format="multipart")
    assert response.status_code == 201, response.content
    [answer] = response.json()
    assert answer["gradcam"].startswith("data:image/png;base64,")
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.django_db
def test_the_train_command_counts_every_members_epochs(owner, dataset):
    from training.management.commands.train import Command

    job = Command()._create_unqueued(owner, dataset, "smoke", smoke(epochs=2, ensemble_size=3))
    assert job.total_epochs == 6
    assert services.config_total_epochs(job.config) == 6

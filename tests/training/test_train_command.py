"""The train command: a normal training job run in the foreground, shown with a progress bar."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from training import services
from training.models import TrainingJob


@pytest.mark.django_db
def test_ctrl_c_cancels_the_job_instead_of_leaving_it_running_for_a_worker(
        owner, dataset, monkeypatch, work_dir):
    def interrupted(*, job_id, on_epoch=None):
        TrainingJob.objects.filter(pk=job_id).update(status=TrainingJob.Status.RUNNING,
                                                     heartbeat_at=timezone.now(), current_epoch=1)
        services.job_workdir(job_id).mkdir(parents=True)
        on_epoch(1, {"loss": 0.9, "val_auc": None})
        raise KeyboardInterrupt

    monkeypatch.setattr(services, "training_job_run", interrupted)
    with pytest.raises(CommandError, match=r"job #\d+ cancelled: interrupted"):
        call_command("train", "--dataset", str(dataset.pk), "--owner", owner.username,
                     "--preset", "smoke")
    job = TrainingJob.objects.get()
    assert job.status == TrainingJob.Status.CANCELLED and job.finished_at is not None
    assert job.log[-1].endswith("cancelled: the train command was interrupted")
    assert not services.job_workdir(job.pk).exists()
    # Nothing for the sweep to hand to a worker once the heartbeat is old.
    TrainingJob.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now().replace(year=2000))
    assert services.training_jobs_sweep() == 0

import shutil

from django.apps import AppConfig
from django.db import transaction
from django.db.models.signals import post_delete


def _remove_workdir(sender, instance, using, **kwargs):
    """A deleted training job's checkpoints go once the delete is committed (see classifier.signals)."""
    from training.services import job_workdir

    workdir = job_workdir(instance.pk)
    transaction.on_commit(lambda: shutil.rmtree(workdir, ignore_errors=True), using=using)


class TrainingConfig(AppConfig):
    name = "training"
    verbose_name = "Training and batch jobs"

    def ready(self):
        from classifier.signals import delete_files_with_rows
        from training.models import InferenceJob, TrainingJob

        delete_files_with_rows(InferenceJob, "input_file", "results_csv", "results_json")
        post_delete.connect(_remove_workdir, sender=TrainingJob, dispatch_uid="training-job-workdir")
